"""Stage 2, normalize (silver): every image of a batch's augmented shard as each configured
size variant (EXIF applied, 8-bit RGB, resized, JPEG), annotations rescaled to match."""
