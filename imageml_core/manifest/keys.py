"""Partition keys and storage locations: built and parsed here, and nowhere else.

Partition keys (the manifest store's ``partition_key``, Dagster run keys):

- ingest: the batch id, ``batch-<16 hex>`` (:func:`imageml_core.discovery.batches.batch_id_for`)
- augment: ``<batch>@<pipeline>-<hash8>[~<ann8>]`` (:class:`AugmentKey`): the pipeline's
  config hash is part of the key, so a new pipeline makes new outputs instead of
  overwriting old ones; ``ann8`` is the batch's annotation version (the annotation files
  its images' folders held, :mod:`imageml_core.manifest.annotation_versions`), absent when there
  were none, so a new or changed annotation file makes a new annotated version
- normalize: ``<augment key>|<variant>@<hash12>`` (:class:`NormalizeKey`), ``hash12`` the
  start of the variant's ``normalization_policy_hash``

Storage layout (README "Conventions", spec 001 for ``normalized/<variant>/``)::

    BRONZE_URI/manifests/ingest/<batch>.json
    BRONZE_URI/unzipped/<zip key as one segment: / and % escaped>/<member>
    AUGMENTED_URI/images/<tag>/<source bucket>/<source key>/aug-<k>.jpg
    AUGMENTED_URI/annotations/<tag>/<batch>[~<ann8>].coco.json | .label_studio.json
    AUGMENTED_URI/manifests/augment/<augment key>.json
    NORMALIZED_URI/normalized/<variant>/<hash12>/<source bucket>/<source key>[.jpg]
    NORMALIZED_URI/normalized/<variant>/<hash12>/annotations/<augment key>.coco.json | .label_studio.json
    NORMALIZED_URI/normalized/<variant>/<hash12>/manifests/<augment key>.json
    TRAINING_URI/datasets/<ds-id>/{train,val}-<nnnnn>.tar | manifest.json

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


#: Characters of an annotation version in an augment key.
ANNOTATION_VERSION_CHARS = 8


@dataclass(frozen=True, order=True)
class AugmentKey:
    """The augment step's partition: one ingest batch under one augmentation config and
    one annotation version (``annotations``: :data:`ANNOTATION_VERSION_CHARS` hex, or empty
    when no annotation file applies to the batch)."""

    batch_id: str
    tag: str
    annotations: str = ""

    def __str__(self) -> str:
        suffix = f"~{self.annotations}" if self.annotations else ""
        return f"{self.batch_id}@{self.tag}{suffix}"

    @property
    def name(self) -> str:
        """``<batch>[~<ann8>]``: the batch as file names under a tag's folder spell it."""
        return f"{self.batch_id}~{self.annotations}" if self.annotations else self.batch_id

    @classmethod
    def parse(cls, key: str) -> AugmentKey:
        """Raises :class:`InvalidPartitionKey` unless ``key`` is ``<batch>@<tag>[~<ann8>]``."""
        batch_id, sep, tag = key.partition("@")
        tag, tilde, annotations = tag.rpartition("~") if "~" in tag else (tag, "", "")
        if not (sep and batch_id and tag) or (
            tilde
            and not (
                len(annotations) == ANNOTATION_VERSION_CHARS
                and all(c in "0123456789abcdef" for c in annotations)
            )
        ):
            raise InvalidPartitionKey(
                f"{key!r} is not an augment partition <batch>@<tag>[~<annotation version>]"
            )
        return cls(batch_id, tag, annotations)


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
    annotations: str = ""

    @property
    def augment(self) -> AugmentKey:
        """The augment partition whose shard this normalizes."""
        return AugmentKey(self.batch_id, self.tag, self.annotations)

    @classmethod
    def of(cls, augment: AugmentKey, variant: str, policy_hash: str) -> NormalizeKey:
        """The key of ``variant`` of ``augment``'s shard."""
        return cls(augment.batch_id, augment.tag, variant, policy_hash, augment.annotations)

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
        return cls.of(augment, variant, policy_hash)


# --------------------------------------------------------------------------- ingest
def ingest_manifest_uri(bronze_uri: S3Uri, batch_id: str) -> S3Uri:
    """``BRONZE_URI/manifests/ingest/<batch>.json``: where an ingest batch's manifest lives."""
    return bronze_uri.join("manifests", "ingest", f"{batch_id}.json")


def _one_segment(text: str) -> str:
    """``text`` as one key segment, one-to-one: ``%`` and ``/`` percent-encoded, and
    ``_long`` written ``%5Flong`` so that it cannot pose as a hashed key (:func:`bounded`)."""
    out = text.replace("%", "%25").replace("/", "%2F")
    return "%5Flong" if out == "_long" else out


def unzipped_member_uri(bronze_uri: S3Uri, zip_key: str, member: str) -> S3Uri:
    """Where an extracted ZIP member lives: ``BRONZE_URI/unzipped/<zip key>/<member>`` with
    the archive's key (relative to ``RAW_URI``) as *one* segment (``photos%2Fday1.zip``).

    With the key's ``/`` kept, archive ``c.zip`` holding ``d.zip/e.jpg`` and archive
    ``c.zip/d.zip`` holding ``e.jpg`` would land on the same key; as one segment, distinct
    (archive, member) pairs always give distinct keys (:func:`bounded` for long ones)."""
    return bounded(bronze_uri.join("unzipped"), f"{_one_segment(zip_key)}/{member}")


def archive_member_ref(zip_uri: str, member: str, occurrence: int = 1) -> str:
    """Ledger identity of a ZIP member that was not extracted: ``s3://b/a.zip#dir/x.jpg``.

    A ZIP can hold one name several times; occurrence ``n`` > 1 (in archive order) is
    ``...#dir/x.jpg#n``. ``%`` and ``#`` in the name are percent-encoded (``%25``, ``%23``)
    so that no name can pose as another's occurrence. A name longer than
    :data:`MAX_KEY_BYTES` (ZIP allows 64 KiB; a database index does not) becomes
    ``#%long/<32 hex of SHA-256(name)>/<its last 200 bytes>`` (a bare ``%`` never comes
    from a real name, whose ``%`` is ``%25``): every ref stays unique and bounded."""
    name = member.replace("%", "%25").replace("#", "%23")
    if len(name.encode()) > MAX_KEY_BYTES:
        digest = hashlib.sha256(member.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        name = f"%long/{digest}/{tail_bytes(name, LONG_NAME_BYTES)}"
    return f"{zip_uri}#{name}" if occurrence == 1 else f"{zip_uri}#{name}#{occurrence}"


# --------------------------------------------------------------------------- augment
def augment_manifest_uri(augmented_uri: S3Uri, key: AugmentKey) -> S3Uri:
    """``AUGMENTED_URI/manifests/augment/<augment key>.json``: an augment partition's manifest."""
    return augmented_uri.join("manifests", "augment", f"{key}.json")


def augment_annotation_uris(augmented_uri: S3Uri, key: AugmentKey) -> tuple[S3Uri, S3Uri]:
    """(COCO, Label Studio) JSON of an augment partition."""
    base = augmented_uri.join("annotations", key.tag)
    return base.join(f"{key.name}.coco.json"), base.join(f"{key.name}.label_studio.json")


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
    """``<variant base>/manifests/<augment key>.json`` (``base`` from :func:`variant_base`)."""
    return base.join("manifests", f"{key.augment}.json")


def normalize_annotation_uris(base: S3Uri, key: NormalizeKey) -> tuple[S3Uri, S3Uri]:
    """(COCO, Label Studio) JSON of one variant of one batch's shard."""
    return (
        base.join("annotations", f"{key.augment}.coco.json"),
        base.join("annotations", f"{key.augment}.label_studio.json"),
    )


# --------------------------------------------------------------------------- train
def training_dataset_base(training_uri: S3Uri, version: str) -> S3Uri:
    """``TRAINING_URI/datasets/<ds-id>/``: a training dataset version's shards and manifest."""
    return training_uri.join("datasets", version)


def training_shard_name(split: str, index: int) -> str:
    """``<split>-<nnnnn>.tar``: shard ``index`` (from 0) of a split."""
    return f"{split}-{index:05d}.tar"


def trained_model_manifest_uri(training_uri: S3Uri, partition: str, fingerprint: str) -> S3Uri:
    """``TRAINING_URI/models/<day>/<fingerprint>.json``: what one training of a daily
    partition produced (the model lives in MLflow; this records where)."""
    return training_uri.join("models", partition, f"{fingerprint}.json")
