"""Stage 3, gold tier: the ``training_shards`` asset (a training dataset version)."""

import hashlib
import json

import dagster as dg

from imageml_assets.stage_images import stage_op_tags
from imageml_core.settings import ConfigError, Settings
from imageml_core.sizes import parse_sizes
from imageml_core.stages.normalize.image import NormalizePolicy
from imageml_core.stages.train.dataset import SPLIT_RULE, DatasetConfig, build_training_dataset
from imageml_core.uris import S3Uri
from imageml_resources import (
    AugmentationResource,
    DataLayoutResource,
    ManifestStoreResource,
    NormalizationResource,
    NvmeStagingResource,
    ObjectStoreResource,
)


def train_variant(settings: Settings) -> str:
    """``TRAIN_VARIANT``, or the first of ``NORMALIZE_SIZES``; raises :class:`ConfigError`
    naming both when it is not one of the normalized variants."""
    names = [v.name for v in parse_sizes(settings.normalize_sizes)]
    variant = settings.train_variant or names[0]
    if variant not in names:
        raise ConfigError(
            f"TRAIN_VARIANT={variant!r} is not a normalized variant: NORMALIZE_SIZES makes "
            f"{', '.join(names)}"
        )
    return variant


def dataset_config(
    settings: Settings, policy: NormalizePolicy, augment_tag: str, training_uri: S3Uri
) -> DatasetConfig:
    """The gold tier's configuration from the settings, the current normalization policy
    and augmentation (what the asset builds and what ``imageml run`` checks)."""
    variant = train_variant(settings)
    spec = next(v for v in policy.variants if v.name == variant)
    curated = settings.train_curated_uri is not None
    return DatasetConfig(
        variant="curated" if curated else variant,
        policy_hash="" if curated else policy.variant_hash(spec),
        augment_tag=augment_tag,
        val_fraction=settings.train_val_fraction,
        shard_images=settings.train_shard_images,
        training_uri=training_uri,
        dataset_name=settings.dataset_name,
        curated_uri=settings.train_curated_uri,
    )


def _source_text(settings: Settings, variant: str) -> str:
    if settings.train_curated_uri is not None:
        return f"the curated prefix {settings.train_curated_uri}"
    return f"the {variant} variant of every normalized batch"


def build_training_shards(settings: Settings) -> dg.AssetsDefinition:
    """The asset; its code version hashes the variant, the split fraction, the shard size
    and the split rule (what decides a version's bytes besides its inputs)."""
    variant = train_variant(settings)
    source = f"curated {settings.train_curated_uri}" if settings.train_curated_uri else variant
    version = hashlib.sha256(
        json.dumps(
            [source, settings.train_val_fraction, settings.train_shard_images, SPLIT_RULE]
        ).encode()
    ).hexdigest()[:12]

    @dg.asset(
        name="training_shards",
        deps=[dg.AssetKey("normalized_variants")],
        group_name="gold",
        kinds={"s3", "python"},
        code_version=version,
        tags={"imageml/stage": "train"},
        op_tags=stage_op_tags("train"),
        description=(
            f"A training dataset version from {_source_text(settings, variant)}: "
            "deterministic train/val split by source image hash, tar shards in WebDataset "
            "layout, a manifest; its id is the dataset pointer training reads."
        ),
    )
    def training_shards(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        nvme: NvmeStagingResource,
        manifest_store: ManifestStoreResource,
        layout: DataLayoutResource,
        augmentation: AugmentationResource,
        normalization: NormalizationResource,
    ) -> dg.MaterializeResult:
        result = build_training_dataset(
            store=object_store.get_client(),
            staging=nvme.get_staging(),
            manifest=manifest_store.get_store(),
            config=dataset_config(
                settings,
                normalization.get_policy(),
                augmentation.get_spec().tag,
                layout.uri("training"),
            ),
            run_id=context.run_id,
            log_fn=context.log.info,
        )
        return dg.MaterializeResult(
            metadata={
                "dataset_version": result.version,
                "already_published": result.already_published,
                "train_images": result.counts.get("train", 0),
                "val_images": result.counts.get("val", 0),
                "objects_written": result.objects_written,
                "left_out": len(result.left_out),
                "dagster/row_count": sum(result.counts.values()),
                "manifest_uri": dg.MetadataValue.url(result.manifest_uri),
            },
            data_version=dg.DataVersion(result.version),
        )

    return training_shards
