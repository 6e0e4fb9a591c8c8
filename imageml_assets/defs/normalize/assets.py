"""Silver tier: ``normalized_variants`` (ingest batch x size variant) and its check."""

import hashlib
import warnings

import dagster as dg

from imageml_assets.metadata import quarantine_table
from imageml_assets.partitions import normalize_partitions
from imageml_assets.stage_images import stage_op_tags
from imageml_core.settings import Settings
from imageml_core.sizes import SizeVariant
from imageml_core.stages.normalize.image import NormalizePolicy
from imageml_core.stages.normalize.partition import (
    NormalizeConfig,
    NormalizeResult,
    normalize_partition,
)
from imageml_resources import (
    AugmentationResource,
    DataLayoutResource,
    ManifestStoreResource,
    NormalizationResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

# Mapping a (batch, variant) partition to its batch is what the asset needs; the class is
# marked beta, and the warning would print on every load of the code location.
warnings.filterwarnings("ignore", message=".*MultiToSingleDimensionPartitionMapping.*")

EVERY_SOURCE_HAS_VARIANT = "every_source_has_this_variant"


def policy_code_version(policy: NormalizePolicy) -> str:
    """12 hex over every variant's ``normalization_policy_hash``: any setting or library
    version that changes a variant's bytes changes the asset's code version."""
    hashes = ",".join(sorted(policy.variant_hash(v) for v in policy.variants))
    return hashlib.sha256(hashes.encode()).hexdigest()[:12]


def variant_preview(result: NormalizeResult, spec: SizeVariant) -> dg.MarkdownMetadataValue:
    """A Markdown card of one variant partition: its rule, output sizes and files."""
    rule = (
        f"cap {spec.width}x{spec.height} (aspect kept, never upscaled)"
        if spec.kind == "cap"
        else f"fixed {spec.width}x{spec.height}"
    )
    rows = "".join(f"| {size} | {n} |\n" for size, n in result.sizes.items())
    lines = [
        f"**{result.variant}**: {rule}; {result.outputs} outputs",
        "",
        "| size (px) | outputs |",
        "|---|---|",
        rows.rstrip("\n") or "| - | 0 |",
        "",
        f"- COCO: `{result.coco_uri}`",
        f"- Label Studio tasks: `{result.label_studio_uri}`",
        f"- manifest: `{result.manifest_uri}`",
    ]
    return dg.MetadataValue.md("\n".join(lines) + "\n")


def build_normalized_variants(settings: Settings, variant_names: list[str]) -> dg.AssetsDefinition:
    """The asset for the variants in ``NORMALIZE_SIZES``; its code version follows the
    normalization policy (:func:`policy_code_version`)."""
    policy = NormalizationResource.from_settings(settings).get_policy()

    @dg.asset(
        name="normalized_variants",
        partitions_def=normalize_partitions(variant_names),
        deps=[
            dg.AssetDep(
                "augmented_images",
                partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                    partition_dimension_name="batch"
                ),
            )
        ],
        group_name="silver",
        kinds={"s3", "python"},
        code_version=policy_code_version(policy),
        tags={"imageml/stage": "normalize"},
        op_tags=stage_op_tags("normalize"),
        check_specs=[dg.AssetCheckSpec(EVERY_SOURCE_HAS_VARIANT, asset="normalized_variants")],
        description=(
            "Every image of a batch's augmented shard (originals and augmented copies) as one "
            "size variant: EXIF applied, RGB, resized, JPEG; annotations rescaled to match."
        ),
    )
    def normalized_variants(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        nvme: NvmeStagingResource,
        manifest_store: ManifestStoreResource,
        layout: DataLayoutResource,
        augmentation: AugmentationResource,
        normalization: NormalizationResource,
    ) -> dg.MaterializeResult:
        key = context.partition_key
        assert isinstance(key, dg.MultiPartitionKey)
        dims = key.keys_by_dimension
        policy = normalization.get_policy()
        result = normalize_partition(
            dims["batch"],
            dims["variant"],
            store=object_store.get_client(),
            staging=nvme.get_staging(),
            manifest=manifest_store.get_store(),
            policy=policy,
            config=NormalizeConfig(
                normalized_uri=layout.uri("normalized"),
                dataset_name=layout.dataset_name,
                augment_tag=augmentation.get_spec().tag,
                workers=normalization.workers,
            ),
            run_id=context.run_id,
            log_fn=context.log.info,
        )
        assert result.checks is not None  # recorded with every publication
        spec = next(v for v in policy.variants if v.name == result.variant)
        metadata: dict[str, object] = {
            **result.metadata(),
            "dagster/row_count": result.outputs,
            "manifest_uri": dg.MetadataValue.url(result.manifest_uri),
            "preview": variant_preview(result, spec),
        }
        if result.checks.quarantined:
            metadata["quarantined"] = quarantine_table(result.checks.quarantined.items())
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=EVERY_SOURCE_HAS_VARIANT,
                    passed=result.checks.passed,
                    metadata={
                        k: dg.MetadataValue.json(v) for k, v in result.checks.to_json().items()
                    },
                )
            ],
        )

    return normalized_variants
