"""Partition keys and storage locations: built and parsed here, and nowhere else.

Partition keys (the manifest store's ``partition_key``, Dagster run keys):

- ingest: the batch id, ``batch-<16 hex>`` (:func:`imageml_core.discovery.batches.batch_id_for`)
- augment: ``<batch>@<pipeline>-<hash8>`` (:class:`AugmentKey`): the pipeline's config hash
  is part of the key, so a new pipeline makes new outputs instead of overwriting old ones
- normalize: ``<batch>@<tag>|<variant>@<hash12>`` (:class:`NormalizeKey`), ``hash12`` the
  start of the variant's ``normalization_policy_hash``

Storage layout (README "Conventions", spec 001 for ``normalized/<variant>/``)::

    BRONZE_URI/manifests/ingest/<batch>.json
    BRONZE_URI/unzipped/<zip key>/<member>
    AUGMENTED_URI/images/<tag>/<source bucket>/<source key>/aug-<k>.jpg
    AUGMENTED_URI/annotations/<tag>/<batch>.coco.json | .label_studio.json
    AUGMENTED_URI/manifests/augment/<batch>@<tag>.json
    NORMALIZED_URI/normalized/<variant>/<hash12>/<source bucket>/<source key>[.jpg]
    NORMALIZED_URI/normalized/<variant>/<hash12>/annotations/<batch>@<tag>.coco.json | .label_studio.json
    NORMALIZED_URI/normalized/<variant>/<hash12>/manifests/<batch>@<tag>.json

An output key that would pass S3's 1,024-byte limit takes the form
``<prefix>/_long/<32 hex>/<end of the name>`` instead (:func:`bounded`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from imageml_core.storage.paths import tail_bytes
from imageml_core.uris import S3Uri

#: Characters of a config hash in an augment tag, and of a policy hash in a normalize key
#: and path: 32 and 48 bits, enough to tell a project's configurations apart.
TAG_HASH_CHARS = 8
POLICY_HASH_CHARS = 12


#: S3's limit on a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Bytes of the readable name kept in a hashed (``_long``) output key.
LONG_NAME_BYTES = 200


def bounded(prefix: S3Uri, readable: str) -> S3Uri:
    """``prefix/readable``, unless that key passes S3's :data:`MAX_KEY_BYTES`: then
    ``prefix/_long/<32 hex of SHA-256(readable)>/<end of readable's last segment>``.

    Output keys repeat the source key under longer prefixes, so a legal source key near
    the limit would make an illegal output key; the hashed form is unique per readable
    name and the manifest keeps the source's URI beside it.
    """
    uri = prefix.join(readable)
    if len(uri.key.encode()) <= MAX_KEY_BYTES:
        return uri
    digest = hashlib.sha256(readable.encode()).hexdigest()[:32]
    base = tail_bytes(readable.rsplit("/", 1)[-1], LONG_NAME_BYTES) or "object"
    return prefix.join("_long", digest, base)


class InvalidPartitionKey(ValueError):
    """A partition key that does not have the shape its step uses."""


def augment_tag(pipeline_name: str, config_hash: str) -> str:
    """``<pipeline>-<hash8>``: names an augmentation configuration in keys and paths."""
    return f"{pipeline_name}-{config_hash[:TAG_HASH_CHARS]}"


@dataclass(frozen=True, order=True)
class AugmentKey:
    """The augment step's partition: one ingest batch under one augmentation config."""

    batch_id: str
    tag: str

    def __str__(self) -> str:
        return f"{self.batch_id}@{self.tag}"

    @classmethod
    def parse(cls, key: str) -> AugmentKey:
        """Raises :class:`InvalidPartitionKey` unless ``key`` is ``<batch>@<tag>``."""
        batch_id, sep, tag = key.partition("@")
        if not (sep and batch_id and tag):
            raise InvalidPartitionKey(f"{key!r} is not an augment partition <batch>@<tag>")
        return cls(batch_id, tag)


@dataclass(frozen=True, order=True)
class NormalizeKey:
    """The normalize step's partition: one variant of one batch's augmented shard (the
    augmentation ``tag`` names which shard) under one policy.

    ``policy_hash`` may be the full ``normalization_policy_hash``; the key uses its first
    :data:`POLICY_HASH_CHARS` characters. The tag is part of the key because a new
    augmentation (another pipeline, more copies) is a new shard to normalize.
    """

    batch_id: str
    tag: str
    variant: str
    policy_hash: str

    @property
    def augment(self) -> AugmentKey:
        """The augment partition whose shard this normalizes."""
        return AugmentKey(self.batch_id, self.tag)

    def __str__(self) -> str:
        return f"{self.augment}|{self.variant}@{self.policy_hash[:POLICY_HASH_CHARS]}"

    @classmethod
    def parse(cls, key: str) -> NormalizeKey:
        """Raises :class:`InvalidPartitionKey` unless ``key`` is
        ``<batch>@<tag>|<variant>@<hash12>``."""
        left, sep1, rest = key.partition("|")
        variant, sep2, policy_hash = rest.rpartition("@")
        if not (sep1 and sep2 and variant and policy_hash):
            raise InvalidPartitionKey(
                f"{key!r} is not a normalize partition <batch>@<tag>|<variant>@<hash12>"
            )
        try:
            augment = AugmentKey.parse(left)
        except InvalidPartitionKey:
            raise InvalidPartitionKey(
                f"{key!r} is not a normalize partition <batch>@<tag>|<variant>@<hash12>"
            ) from None
        return cls(augment.batch_id, augment.tag, variant, policy_hash)


# --------------------------------------------------------------------------- ingest
def ingest_manifest_uri(bronze_uri: S3Uri, batch_id: str) -> S3Uri:
    """``BRONZE_URI/manifests/ingest/<batch>.json``: where an ingest batch's manifest lives."""
    return bronze_uri.join("manifests", "ingest", f"{batch_id}.json")


def unzipped_member_uri(bronze_uri: S3Uri, zip_key: str, member: str) -> S3Uri:
    """Where an extracted ZIP member lives; ``zip_key`` is the archive's key relative to
    ``RAW_URI``, ``member`` the member's name in the archive (:func:`bounded`)."""
    return bounded(bronze_uri.join("unzipped"), f"{zip_key}/{member}")


def archive_member_ref(zip_uri: str, member: str, occurrence: int = 1) -> str:
    """Ledger identity of a ZIP member that was not extracted: ``s3://b/a.zip#dir/x.jpg``.

    A ZIP can hold one name several times; occurrence ``n`` > 1 (in archive order) is
    ``...#dir/x.jpg#n``. ``%`` and ``#`` in the name are percent-encoded (``%25``, ``%23``)
    so that no name can pose as another's occurrence: every ref is unique."""
    name = member.replace("%", "%25").replace("#", "%23")
    return f"{zip_uri}#{name}" if occurrence == 1 else f"{zip_uri}#{name}#{occurrence}"


# --------------------------------------------------------------------------- augment
def augment_manifest_uri(augmented_uri: S3Uri, key: AugmentKey) -> S3Uri:
    """``AUGMENTED_URI/manifests/augment/<batch>@<tag>.json``: an augment partition's manifest."""
    return augmented_uri.join("manifests", "augment", f"{key}.json")


def augment_annotation_uris(augmented_uri: S3Uri, key: AugmentKey) -> tuple[S3Uri, S3Uri]:
    """(COCO, Label Studio) JSON of an augment partition."""
    base = augmented_uri.join("annotations", key.tag)
    return base.join(f"{key.batch_id}.coco.json"), base.join(f"{key.batch_id}.label_studio.json")


def augmented_image_uri(augmented_uri: S3Uri, tag: str, source: S3Uri, copy: int) -> S3Uri:
    """Copy ``copy`` of ``source`` (a JPEG whatever the source format; :func:`bounded`)."""
    return bounded(
        augmented_uri.join("images", tag), f"{source.bucket}/{source.key}/aug-{copy}.jpg"
    )


# --------------------------------------------------------------------------- normalize
#: Folder of normalized outputs whose source key is not a ``.jpg``/``.jpeg`` name.
CONVERTED = "_converted"


def variant_base(normalized_uri: S3Uri, variant: str, policy_hash: str) -> S3Uri:
    """Everything of one variant under one policy: ``normalized/<variant>/<hash12>/``.

    The policy hash in the path keeps outputs immutable: a changed setting writes beside
    the old outputs (which their manifests still describe) instead of over them.
    """
    return normalized_uri.join("normalized", variant, policy_hash[:POLICY_HASH_CHARS])


def normalized_image_uri(base: S3Uri, source: S3Uri) -> S3Uri:
    """A source's output (always a JPEG) under a variant base.

    A source whose key ends in ``.jpg``/``.jpeg`` keeps its bucket and key:
    ``<base>/<bucket>/<key>``. Any other goes under ``<base>/_converted/<bucket>/<key>.jpg``.
    The mapping is one-to-one: appending ``.jpg`` alone would give ``a.png`` and
    ``a.png.jpg`` the same output, and no bucket name can start with ``_`` (S3 bucket
    naming rules), so ``_converted`` never meets a source bucket."""
    if source.key.lower().endswith((".jpg", ".jpeg")):
        return bounded(base, f"{source.bucket}/{source.key}")
    return bounded(base, f"{CONVERTED}/{source.bucket}/{source.key}.jpg")


def normalize_manifest_uri(base: S3Uri, key: NormalizeKey) -> S3Uri:
    """``<variant base>/manifests/<batch>@<tag>.json`` (``base`` from :func:`variant_base`)."""
    return base.join("manifests", f"{key.augment}.json")


def normalize_annotation_uris(base: S3Uri, key: NormalizeKey) -> tuple[S3Uri, S3Uri]:
    """(COCO, Label Studio) JSON of one variant of one batch's shard."""
    return (
        base.join("annotations", f"{key.augment}.coco.json"),
        base.join("annotations", f"{key.augment}.label_studio.json"),
    )
