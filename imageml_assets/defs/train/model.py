"""Stage 3: the ``trained_model`` asset (daily partitions) and its promotion-gate check."""

from typing import Any

import dagster as dg

from imageml_assets.defs.train.assets import dataset_config
from imageml_assets.defs.train.config import TrainedModelConfig, training_plan
from imageml_assets.defs.train.schedule import training_days
from imageml_assets.stage_images import stage_op_tags
from imageml_core.revision import code_revision
from imageml_core.settings import Settings
from imageml_core.stages.train.contract import TrainingError
from imageml_core.stages.train.dataset import current_inputs
from imageml_core.stages.train.run import MlflowTracker, train_model
from imageml_core.stages.train.tracking import TrackingError
from imageml_core.stages.train.training import TrainedModel, TrainingFailed, UnknownDataset
from imageml_resources import (
    AugmentationResource,
    DataLayoutResource,
    ManifestStoreResource,
    MlflowResource,
    NormalizationResource,
    NvmeStagingResource,
    ObjectStoreResource,
)

BEATS_CHAMPION = "beats_champion"

# Failures a user can cause or fix (bad pointer, empty set, unknown model, server down):
# one line in the run's failure, no retry (it would fail the same way).
_USER_FAILURES = (UnknownDataset, TrainingFailed, TrainingError, TrackingError)


def _metadata(result: TrainedModel, mlflow: MlflowResource) -> dict[str, Any]:
    """Links to the MLflow run and model version, and the headline metrics as numbers (so
    the UI plots them across partitions)."""
    metadata: dict[str, Any] = {
        "registered_model": result.registered_model,
        "model_version": dg.MetadataValue.int(int(result.model_version)),
        "model_uri": result.model_uri,
        "dataset_version": result.dataset_version,
        "mlflow_run_id": result.run_id,
        "promoted": result.promoted,
        "already_trained": result.already_trained,
        "headline_metric": result.headline,
    }
    if result.run_url:
        metadata["mlflow_run"] = dg.MetadataValue.url(result.run_url)
    if url := mlflow.model_version_url(result.model_version, result.registered_model):
        metadata["mlflow_model_version"] = dg.MetadataValue.url(url)
    for name, value in sorted(result.metrics.items()):
        metadata[name] = dg.MetadataValue.float(float(value))
    if result.manifest_uri:
        metadata["manifest_uri"] = dg.MetadataValue.url(result.manifest_uri)
    return metadata


def _gate(result: TrainedModel, alias: str) -> dg.AssetCheckResult:
    """The promotion gate as a check: passed when this version holds ``alias``. A better
    candidate promoted passes; a worse one warns (the champion stays) rather than failing
    the run."""
    promotion = result.promotion
    reason = str(promotion.get("reason", "recorded by an earlier run"))
    metadata: dict[str, Any] = {"reason": reason, "alias": alias}
    for key in ("candidate_value", "champion_value"):
        if isinstance(promotion.get(key), int | float):
            metadata[key] = dg.MetadataValue.float(float(promotion[key]))
    if promotion.get("champion_version"):
        metadata["champion_version"] = str(promotion["champion_version"])
    return dg.AssetCheckResult(
        check_name=BEATS_CHAMPION,
        passed=result.promoted,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
    )


def build_trained_model(settings: Settings) -> dg.AssetsDefinition:
    """The asset for ``TRAIN_TASK``; partitions by day in ``TRAIN_SCHEDULE_TIMEZONE``. Its
    code version is the training plan's fingerprint (task, model, every hyperparameter,
    instances): another configuration shows the day's model as stale in the UI."""
    code_version = training_plan(settings).fingerprint("")[:12]

    @dg.asset(
        name="trained_model",
        deps=[dg.AssetKey("training_shards")],
        partitions_def=training_days(settings),
        code_version=code_version,
        group_name="models",
        kinds={"pytorch", "mlflow"},
        tags={"imageml/stage": "train"},
        op_tags=stage_op_tags("train"),
        check_specs=[
            dg.AssetCheckSpec(
                BEATS_CHAMPION,
                asset="trained_model",
                description=(
                    f"The new model version beat the `{settings.promotion_alias}` alias on "
                    "the validation metric and took the alias (or was promoted by hand)."
                ),
            )
        ],
        description=(
            f"A {settings.train_task} model ({settings.train_model} backbone) trained on the "
            "newest gold dataset version (or TRAIN_DATASET), tracked in MLflow and "
            f"registered as {settings.registered_model}; promoted to "
            f"@{settings.promotion_alias} only when it beats the current one."
        ),
    )
    def trained_model(
        context: dg.AssetExecutionContext,
        config: TrainedModelConfig,
        object_store: ObjectStoreResource,
        nvme: NvmeStagingResource,
        manifest_store: ManifestStoreResource,
        layout: DataLayoutResource,
        mlflow: MlflowResource,
        augmentation: AugmentationResource,
        normalization: NormalizationResource,
    ) -> dg.MaterializeResult:
        from mlflow.exceptions import MlflowException

        from imageml_core.stages.train.trainer import TimmTrainer

        plan = training_plan(settings, config)
        store = object_store.get_client()
        manifest = manifest_store.get_store()
        gold = dataset_config(
            settings,
            normalization.get_policy(),
            augmentation.get_spec().tag,
            layout.uri("training"),
        )
        tags = {
            "dagster.run_id": context.run_id,
            "dagster.partition": context.partition_key,
            "imageml.git_sha": code_revision(),
        }
        try:
            result = train_model(
                store=store,
                staging=nvme.get_staging(),
                manifest=manifest,
                tracker=MlflowTracker(
                    tracking_uri=mlflow.resolved_tracking_uri() if mlflow.tracking_uri else None,
                    registry_uri=mlflow.resolved_registry_uri(),
                    experiment_name=mlflow.experiment_name,
                    registered_model=plan.registered_model,
                    alias=plan.promotion_alias,
                ),
                trainer=TimmTrainer(),
                plan=plan,
                day=context.partition_key,
                dataset_pointer=config.dataset or settings.train_dataset,
                training_uri=layout.uri("training"),
                gold_inputs=current_inputs(store, manifest, gold),
                dataset_name=settings.dataset_name,
                force=config.force,
                force_promotion=config.force_promotion,
                tags=tags,
                run_key=context.run_id,
                log_fn=context.log.info,
            )
        except _USER_FAILURES as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        except MlflowException as exc:  # e.g. the registry refused an alias or a name
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise dg.Failure(description=f"MLflow: {first}", allow_retries=False) from None
        return dg.MaterializeResult(
            metadata=_metadata(result, mlflow),
            check_results=[_gate(result, plan.promotion_alias)],
            data_version=dg.DataVersion(result.model_uri),
        )

    return trained_model
