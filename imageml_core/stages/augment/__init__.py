"""Stage 1, augment step: N deterministic Albumentations copies of every ingested image,
annotations moved with the pixels, published in COCO and Label Studio form."""
