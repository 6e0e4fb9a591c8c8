"""Run configuration of ``trained_model``: each field overrides its setting for one run
(unset fields take the environment's value, so the schedule needs no config)."""

from typing import TypeVar

import dagster as dg
from pydantic import Field

from imageml_core.settings import ConfigError, Settings
from imageml_core.stages.train.contract import TrainerConfig
from imageml_core.stages.train.training import TrainingPlan

T = TypeVar("T")


class TrainedModelConfig(dg.Config):
    """Per-run overrides of the TRAIN_* settings, plus ``force`` and ``force_promotion``."""

    force: bool = Field(
        False,
        description="Train even if this day's partition was trained on the same dataset "
        "version and configuration (a new MLflow run and model version).",
    )
    force_promotion: bool = Field(
        False,
        description="Manual override of the promotion gate: move the alias to this run's "
        "model version whatever its metric.",
    )
    dataset: str | None = Field(None, description="TRAIN_DATASET: a ds-<16 hex> version id.")
    epochs: int | None = Field(None, ge=1, description="TRAIN_EPOCHS.")
    max_minutes: float | None = Field(None, ge=0, description="TRAIN_MAX_MINUTES (0: none).")
    batch_size: int | None = Field(None, ge=1, description="TRAIN_BATCH_SIZE.")
    learning_rate: float | None = Field(None, gt=0, description="TRAIN_LEARNING_RATE.")
    image_size: int | None = Field(None, ge=32, le=4096, description="TRAIN_IMAGE_SIZE.")
    model: str | None = Field(None, description="TRAIN_MODEL (a timm name).")
    seed: int | None = Field(None, ge=0, description="TRAIN_SEED.")
    instances: int | None = Field(None, ge=1, description="TRAIN_INSTANCES.")


def training_plan(settings: Settings, config: TrainedModelConfig | None = None) -> TrainingPlan:
    """The plan for one run: the settings, with ``config``'s fields where they are set.
    Raises :class:`ConfigError` naming the variable for a combination that cannot run."""
    c = config or TrainedModelConfig()

    def pick(value: T | None, default: T) -> T:
        return default if value is None else value

    max_minutes = pick(c.max_minutes, settings.train_max_minutes)
    trainer = TrainerConfig(
        task=settings.train_task,  # type: ignore[arg-type]  # validated by Settings
        model=pick(c.model, settings.train_model),
        image_size=pick(c.image_size, settings.train_image_size),
        epochs=pick(c.epochs, settings.train_epochs),
        batch_size=pick(c.batch_size, settings.train_batch_size),
        max_minutes=max_minutes or None,
        learning_rate=pick(c.learning_rate, settings.train_learning_rate),
        seed=pick(c.seed, settings.train_seed),
        num_workers=settings.train_workers,
        pretrained_path=settings.train_pretrained_path or None,
    )
    if not trainer.model.strip():
        raise ConfigError("TRAIN_MODEL is empty: name a timm model, e.g. resnet10t")
    return TrainingPlan(
        config=trainer,
        instances=pick(c.instances, settings.train_instances),
        images_per_node=settings.train_images_per_node,
        registered_model=settings.registered_model,
        promotion_alias=settings.promotion_alias,
    )
