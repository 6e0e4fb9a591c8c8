"""The code location (``workspace.yaml``): each stage's definitions, merged, with the
resources built from the settings in one place.

Each stage's wiring lives in ``defs/<stage>/`` and exposes ``build_defs(settings)``;
settings are read (and validated: a bad value fails the load with one clear message) once.
"""

import os

import dagster as dg

from imageml_assets.defs import augment, ingest, mirror, normalize, train
from imageml_core.settings import ConfigError, Settings
from imageml_resources import build_resources

__all__ = ["build_definitions", "build_resources", "defs"]


def _executor() -> dg.ExecutorDefinition | None:
    """``IMAGEML_EXECUTOR``: ``k8s`` (a pod per step, per-stage images), else Dagster's default."""
    choice = os.environ.get("IMAGEML_EXECUTOR", "multiprocess")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return None
    raise ConfigError(f"IMAGEML_EXECUTOR={choice!r}: expected k8s, multiprocess or in_process")


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """Every asset, check, job and sensor of every stage, with their resources."""
    settings = settings or Settings.from_env()
    stages = dg.Definitions.merge(
        ingest.build_defs(settings),
        augment.build_defs(settings),
        normalize.build_defs(settings),
        train.build_defs(settings),
    )
    asset_keys = [a.key for a in stages.assets or []]  # type: ignore[union-attr]
    return dg.Definitions.merge(
        stages,
        mirror.build_defs(asset_keys),
        dg.Definitions(resources=build_resources(settings), executor=_executor()),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location's definitions: :func:`build_definitions` with settings from the env."""
    return build_definitions()
