"""Partition keys and the storage layout (imageml_core.manifest.keys).

The layout asserted here is README.md "Conventions"::

    BRONZE_URI/manifests/ingest/<batch>.json
    BRONZE_URI/unzipped/<zip key as one segment>/<member>
    AUGMENTED_URI/images/<pipeline>-<hash8>/<bucket>/<source key>/aug-<k>.jpg
    AUGMENTED_URI/annotations/<pipeline>-<hash8>/<batch>.coco.json | .label_studio.json
    AUGMENTED_URI/manifests/augment/<batch>@<pipeline>-<hash8>.json
    NORMALIZED_URI/normalized/<variant>/<hash12>/<bucket>/<source key>[.jpg]
    NORMALIZED_URI/normalized/<variant>/<hash12>/annotations/<batch>.coco.json | .label_studio.json
    NORMALIZED_URI/normalized/<variant>/<hash12>/manifests/<batch>.json
"""

from __future__ import annotations

import pytest

from imageml_core.manifest.keys import (
    POLICY_HASH_CHARS,
    TAG_HASH_CHARS,
    AugmentKey,
    InvalidPartitionKey,
    NormalizeKey,
    archive_member_ref,
    augment_annotation_uris,
    augment_manifest_uri,
    augment_tag,
    augmented_image_uri,
    ingest_manifest_uri,
    normalize_annotation_uris,
    normalize_manifest_uri,
    normalized_image_uri,
    unzipped_member_uri,
    variant_base,
)
from imageml_core.uris import S3Uri, parse_s3_uri

BATCH = "batch-0123456789abcdef"
CONFIG_HASH = "abcdef0123456789" + "f" * 48
POLICY_HASH = "0123456789abcdef" + "9" * 48
TAG = "default-abcdef01"

BRONZE = S3Uri("lake-bronze", "tiers/bronze")
AUGMENTED = S3Uri("lake-silver", "augmented")
NORMALIZED = S3Uri("lake-silver", "normalized-tier")


# ---------------------------------------------------------------------------- keys
def test_hash_lengths() -> None:
    assert TAG_HASH_CHARS == 8
    assert POLICY_HASH_CHARS == 12


def test_augment_tag() -> None:
    assert augment_tag("default", "abcdef0123456789") == "default-abcdef01"
    assert augment_tag("light", CONFIG_HASH) == "light-abcdef01"
    assert augment_tag("my-pipeline", "1234") == "my-pipeline-1234"


def test_augment_key_str_and_parse() -> None:
    key = AugmentKey(BATCH, TAG)
    assert str(key) == "batch-0123456789abcdef@default-abcdef01"
    assert AugmentKey.parse(str(key)) == key
    parsed = AugmentKey.parse("batch-1@light-00ff00ff")
    assert (parsed.batch_id, parsed.tag) == ("batch-1", "light-00ff00ff")


def test_augment_key_parse_splits_at_first_at_sign() -> None:
    assert AugmentKey.parse("b@t@x") == AugmentKey("b", "t@x")


@pytest.mark.parametrize(
    "bad", ["batch-1", "@tag", "batch-1@", "@", "", "b@t~", "b@t~xyz", "b@~0123abcd"]
)
def test_augment_key_parse_refuses_malformed(bad: str) -> None:
    with pytest.raises(InvalidPartitionKey) as err:
        AugmentKey.parse(bad)
    assert str(err.value) == (
        f"{bad!r} is not an augment partition <batch>@<tag>[~<annotation version>]"
    )
    assert isinstance(err.value, ValueError)


def test_an_annotation_version_is_part_of_the_augment_and_normalize_keys() -> None:
    key = AugmentKey(BATCH, TAG, "0123abcd")
    assert str(key) == f"{BATCH}@{TAG}~0123abcd"
    assert AugmentKey.parse(str(key)) == key
    assert AugmentKey.parse(f"{BATCH}@{TAG}") == AugmentKey(BATCH, TAG)
    nkey = NormalizeKey.of(key, "720p", POLICY_HASH)
    assert str(nkey) == f"{BATCH}@{TAG}~0123abcd|720p@{POLICY_HASH[:12]}"
    assert NormalizeKey.parse(str(nkey)) == NormalizeKey(
        BATCH, TAG, "720p", POLICY_HASH[:12], "0123abcd"
    )
    # Each annotated version has its own files: the earlier ones stay as they were.
    base = S3Uri("b", "augmented")
    assert (
        augment_annotation_uris(base, key)[0]
        != augment_annotation_uris(base, AugmentKey(BATCH, TAG))[0]
    )
    assert augment_manifest_uri(base, key).key == f"augmented/manifests/augment/{key}.json"


def test_normalize_key_str_keeps_twelve_hash_characters() -> None:
    key = NormalizeKey(BATCH, "default-1a2b3c4d", "720p", POLICY_HASH)
    assert str(key) == "batch-0123456789abcdef@default-1a2b3c4d|720p@0123456789ab"
    assert key.augment == AugmentKey(BATCH, "default-1a2b3c4d")
    parsed = NormalizeKey.parse(str(key))
    assert parsed == NormalizeKey(BATCH, "default-1a2b3c4d", "720p", "0123456789ab")
    assert parsed != key  # the full hash is not in the key
    assert str(parsed) == str(key)
    short = NormalizeKey(BATCH, "light-00000000", "720p", "0123456789ab")
    assert NormalizeKey.parse(str(short)) == short


def test_each_augmentation_of_a_batch_is_its_own_normalize_partition() -> None:
    """A new augmentation (another pipeline, more copies) is a new shard to normalize: its
    key, manifest and annotation files differ from the earlier one's."""
    one = NormalizeKey(BATCH, "default-11111111", "720p", POLICY_HASH)
    two = NormalizeKey(BATCH, "default-22222222", "720p", POLICY_HASH)
    base = variant_base(NORMALIZED, "720p", POLICY_HASH)
    assert str(one) != str(two)
    assert normalize_manifest_uri(base, one) != normalize_manifest_uri(base, two)
    assert normalize_annotation_uris(base, one) != normalize_annotation_uris(base, two)


@pytest.mark.parametrize(
    ("text", "batch", "tag", "variant", "policy_hash"),
    [
        (
            "batch-0123456789abcdef@default-1a2b3c4d|800x600@0123456789ab",
            BATCH,
            "default-1a2b3c4d",
            "800x600",
            "0123456789ab",
        ),
        (
            "batch-1-2@light-0|1920x1080@aaaabbbbcccc",
            "batch-1-2",
            "light-0",
            "1920x1080",
            "aaaabbbbcccc",
        ),
        ("batch-x@t|2160p@ffffffffffff", "batch-x", "t", "2160p", "ffffffffffff"),
        ("b@t|v@with@sign@h", "b", "t", "v@with@sign", "h"),
        ("b@t|v|w@h", "b", "t", "v|w", "h"),
    ],
)
def test_normalize_key_parse(
    text: str, batch: str, tag: str, variant: str, policy_hash: str
) -> None:
    key = NormalizeKey.parse(text)
    assert (key.batch_id, key.tag, key.variant, key.policy_hash) == (
        batch,
        tag,
        variant,
        policy_hash,
    )
    assert str(key) == text


@pytest.mark.parametrize(
    "bad",
    ["batch-1", "b@t|v", "b@t|@h", "|v@h", "b@t|v@", "b@h", "b|v@h", "@t|v@h", "b@|v@h", ""],
)
def test_normalize_key_parse_refuses_malformed(bad: str) -> None:
    with pytest.raises(InvalidPartitionKey) as err:
        NormalizeKey.parse(bad)
    assert str(err.value) == (
        f"{bad!r} is not a normalize partition <batch>@<tag>|<variant>@<hash12>"
    )


def test_keys_order_and_hash() -> None:
    assert sorted([AugmentKey("b2", "t"), AugmentKey("b1", "z"), AugmentKey("b1", "a")]) == [
        AugmentKey("b1", "a"),
        AugmentKey("b1", "z"),
        AugmentKey("b2", "t"),
    ]
    assert len({NormalizeKey("b", "t", "v", "h"), NormalizeKey("b", "t", "v", "h")}) == 1


# ---------------------------------------------------------------------------- ingest layout
def test_ingest_manifest_uri() -> None:
    assert str(ingest_manifest_uri(BRONZE, BATCH)) == (
        "s3://lake-bronze/tiers/bronze/manifests/ingest/batch-0123456789abcdef.json"
    )
    assert str(ingest_manifest_uri(S3Uri("lake-bronze", ""), BATCH)) == (
        "s3://lake-bronze/manifests/ingest/batch-0123456789abcdef.json"
    )
    assert str(ingest_manifest_uri(parse_s3_uri("s3://lake-bronze/tiers/bronze/"), BATCH)) == (
        "s3://lake-bronze/tiers/bronze/manifests/ingest/batch-0123456789abcdef.json"
    )


def test_unzipped_member_uri() -> None:
    uri = unzipped_member_uri(BRONZE, "2024/trip/photos.zip", "day 1/IMG_0001.JPG")
    assert uri == S3Uri(
        "lake-bronze", "tiers/bronze/unzipped/2024%2Ftrip%2Fphotos.zip/day 1/IMG_0001.JPG"
    )
    assert str(uri) == (
        "s3://lake-bronze/tiers/bronze/unzipped/2024%2Ftrip%2Fphotos.zip/day 1/IMG_0001.JPG"
    )


def test_archive_member_ref() -> None:
    assert archive_member_ref("s3://raw/in/photos.zip", "dir/x.jpg") == (
        "s3://raw/in/photos.zip#dir/x.jpg"
    )
    assert archive_member_ref("s3://raw/a.zip", "../evil.jpg") == "s3://raw/a.zip#../evil.jpg"


# ---------------------------------------------------------------------------- augment layout
def test_augment_manifest_uri() -> None:
    assert str(augment_manifest_uri(AUGMENTED, AugmentKey(BATCH, TAG))) == (
        "s3://lake-silver/augmented/manifests/augment/batch-0123456789abcdef@default-abcdef01.json"
    )


def test_augment_annotation_uris() -> None:
    coco, ls = augment_annotation_uris(AUGMENTED, AugmentKey(BATCH, TAG))
    assert str(coco) == (
        "s3://lake-silver/augmented/annotations/default-abcdef01/batch-0123456789abcdef.coco.json"
    )
    assert str(ls) == (
        "s3://lake-silver/augmented/annotations/default-abcdef01/"
        "batch-0123456789abcdef.label_studio.json"
    )


def test_augmented_image_uri() -> None:
    source = parse_s3_uri("s3://raw-photos/incoming/2024/cat.png")
    assert str(augmented_image_uri(AUGMENTED, TAG, source, 0)) == (
        "s3://lake-silver/augmented/images/default-abcdef01/"
        "raw-photos/incoming/2024/cat.png/aug-0.jpg"
    )
    assert str(augmented_image_uri(AUGMENTED, TAG, source, 3)).endswith("/cat.png/aug-3.jpg")
    # A ZIP member (in bronze) keeps its bronze bucket and key.
    member = parse_s3_uri("s3://lake-bronze/tiers/bronze/unzipped/photos.zip/a.JPEG")
    assert str(augmented_image_uri(AUGMENTED, "light-00000000", member, 1)) == (
        "s3://lake-silver/augmented/images/light-00000000/lake-bronze/tiers/bronze/unzipped/"
        "photos.zip/a.JPEG/aug-1.jpg"
    )


# ---------------------------------------------------------------------------- normalize layout
def test_variant_base_uses_twelve_hash_characters() -> None:
    base = variant_base(NORMALIZED, "800x600", POLICY_HASH)
    assert str(base) == "s3://lake-silver/normalized-tier/normalized/800x600/0123456789ab"
    assert variant_base(NORMALIZED, "800x600", POLICY_HASH[:12]) == base
    assert str(variant_base(S3Uri("lake-silver", ""), "720p", POLICY_HASH)) == (
        "s3://lake-silver/normalized/720p/0123456789ab"
    )


@pytest.mark.parametrize(
    ("source", "expected_key"),
    [
        ("s3://raw-photos/in/cat.png", "_converted/raw-photos/in/cat.png.jpg"),
        ("s3://raw-photos/in/cat.PNG", "_converted/raw-photos/in/cat.PNG.jpg"),
        ("s3://raw-photos/in/dog.jpg", "raw-photos/in/dog.jpg"),
        ("s3://raw-photos/in/dog.JPEG", "raw-photos/in/dog.JPEG"),
        ("s3://raw-photos/in/dog.jpeg", "raw-photos/in/dog.jpeg"),
        ("s3://raw-photos/in/scan.tiff", "_converted/raw-photos/in/scan.tiff.jpg"),
        ("s3://raw-photos/in/noext", "_converted/raw-photos/in/noext.jpg"),
        ("s3://raw-photos/in/jpg", "_converted/raw-photos/in/jpg.jpg"),
        (
            "s3://lake-silver/augmented/images/default-abcdef01/raw-photos/in/cat.png/aug-0.jpg",
            "lake-silver/augmented/images/default-abcdef01/raw-photos/in/cat.png/aug-0.jpg",
        ),
    ],
)
def test_normalized_image_uri(source: str, expected_key: str) -> None:
    base = variant_base(NORMALIZED, "720p", POLICY_HASH)
    assert str(normalized_image_uri(base, parse_s3_uri(source))) == (
        f"s3://lake-silver/normalized-tier/normalized/720p/0123456789ab/{expected_key}"
    )


def test_normalized_image_uris_never_collide() -> None:
    """``a.png`` and ``a.png.jpg`` side by side (found by trying it) once both became
    ``a.png.jpg``: one output overwrote the other. Distinct sources, distinct outputs."""
    base = variant_base(NORMALIZED, "720p", POLICY_HASH)
    keys = ["a.png", "a.png.jpg", "a.jpg", "a.jpg.jpg", "a", "a.JPG", "_converted/a.png"]
    sources = [parse_s3_uri(f"s3://raw/{k}") for k in keys]
    sources.append(parse_s3_uri("s3://converted/raw/a.png"))
    outputs = {str(normalized_image_uri(base, s)) for s in sources}
    assert len(outputs) == len(sources)


NKEY = NormalizeKey(BATCH, "default-1a2b3c4d", "1080p", POLICY_HASH)


def test_normalize_manifest_uri() -> None:
    base = variant_base(NORMALIZED, "1080p", POLICY_HASH)
    assert str(normalize_manifest_uri(base, NKEY)) == (
        "s3://lake-silver/normalized-tier/normalized/1080p/0123456789ab/manifests/"
        "batch-0123456789abcdef@default-1a2b3c4d.json"
    )


def test_normalize_annotation_uris() -> None:
    base = variant_base(NORMALIZED, "1080p", POLICY_HASH)
    coco, ls = normalize_annotation_uris(base, NKEY)
    assert str(coco) == (
        "s3://lake-silver/normalized-tier/normalized/1080p/0123456789ab/annotations/"
        "batch-0123456789abcdef@default-1a2b3c4d.coco.json"
    )
    assert str(ls) == (
        "s3://lake-silver/normalized-tier/normalized/1080p/0123456789ab/annotations/"
        "batch-0123456789abcdef@default-1a2b3c4d.label_studio.json"
    )


def test_layout_matches_readme_conventions() -> None:
    """Each line of README "Conventions" filled in with one set of values."""
    source = parse_s3_uri("s3://raw-photos/in/cat.png")
    akey = AugmentKey(BATCH, augment_tag("default", CONFIG_HASH))
    base = variant_base(NORMALIZED, "720p", POLICY_HASH)
    nkey = NormalizeKey(BATCH, akey.tag, "720p", POLICY_HASH)
    b, a, n = (
        "s3://lake-bronze/tiers/bronze",
        "s3://lake-silver/augmented",
        ("s3://lake-silver/normalized-tier"),
    )
    assert [
        str(ingest_manifest_uri(BRONZE, BATCH)),
        str(unzipped_member_uri(BRONZE, "in/x.zip", "m/y.jpg")),
        str(augmented_image_uri(AUGMENTED, akey.tag, source, 2)),
        *map(str, augment_annotation_uris(AUGMENTED, akey)),
        str(augment_manifest_uri(AUGMENTED, akey)),
        str(normalized_image_uri(base, source)),
        *map(str, normalize_annotation_uris(base, nkey)),
        str(normalize_manifest_uri(base, nkey)),
    ] == [
        f"{b}/manifests/ingest/{BATCH}.json",
        f"{b}/unzipped/in%2Fx.zip/m/y.jpg",
        f"{a}/images/default-abcdef01/raw-photos/in/cat.png/aug-2.jpg",
        f"{a}/annotations/default-abcdef01/{BATCH}.coco.json",
        f"{a}/annotations/default-abcdef01/{BATCH}.label_studio.json",
        f"{a}/manifests/augment/{BATCH}@default-abcdef01.json",
        f"{n}/normalized/720p/0123456789ab/_converted/raw-photos/in/cat.png.jpg",
        f"{n}/normalized/720p/0123456789ab/annotations/{BATCH}@default-abcdef01.coco.json",
        f"{n}/normalized/720p/0123456789ab/annotations/{BATCH}@default-abcdef01.label_studio.json",
        f"{n}/normalized/720p/0123456789ab/manifests/{BATCH}@default-abcdef01.json",
    ]


def test_distinct_archive_members_never_share_an_unzipped_key() -> None:
    # c.zip holding d.zip/e.jpg, and c.zip/d.zip holding e.jpg (both legal in S3).
    one = unzipped_member_uri(BRONZE, "c.zip", "d.zip/e.jpg")
    two = unzipped_member_uri(BRONZE, "c.zip/d.zip", "e.jpg")
    assert one != two
    assert two.key.endswith("unzipped/c.zip%2Fd.zip/e.jpg")
    # An archive stored at a key like a hashed output's cannot pose as one.
    long_member = "/".join(["d" * 200] * 6) + "/pic.jpg"
    hashed = unzipped_member_uri(BRONZE, "x.zip", long_member)
    assert "/_long/" in hashed.key
    digest = hashed.key.split("/_long/", 1)[1].split("/", 1)[0]
    tail = hashed.key.split("/_long/", 1)[1]  # "<hex>/<end of the name>"
    posing = unzipped_member_uri(BRONZE, "_long", tail)  # an archive stored at key "_long"
    assert posing != hashed and "/unzipped/%5Flong/" in posing.key
    assert unzipped_member_uri(BRONZE, f"_long/{digest}", "pic.jpg") != hashed
