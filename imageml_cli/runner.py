"""One-shot processing through the same Dagster definitions the sensors use.

``imageml run`` and ``imageml demo`` evaluate the raw-objects sensor with an empty cursor
(a full scan: the manifest store decides what is new), register the dynamic partitions it
asks for, and execute each run request in process on a real Dagster instance, limited to
the stages up to ``--until``. Batches an earlier run left at an earlier stage are picked up
too. Finally the materializations are mirrored into the manifest store.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from imageml_assets.definitions import build_definitions, build_resources
from imageml_assets.defs.mirror import mirror_materializations
from imageml_assets.defs.normalize import NORMALIZE_JOB
from imageml_assets.defs.train import TRAINED_MODEL_JOB, TRAINING_SHARDS_JOB
from imageml_assets.defs.train.assets import dataset_config
from imageml_assets.defs.train.config import training_plan
from imageml_assets.defs.train.schedule import partition_for
from imageml_assets.jobs import ingest_and_augment_job
from imageml_assets.partitions import ingest_batches
from imageml_cli.recovery import fail_dead_runs, reconcile_materializations, run_tags
from imageml_core.manifest import AUGMENT, INGEST, NORMALIZE, TRAINING_SHARDS, ManifestStore
from imageml_core.manifest.annotation_versions import current_augment_key
from imageml_core.manifest.documents import TrainingDatasetSummary
from imageml_core.manifest.keys import AugmentKey, NormalizeKey
from imageml_core.settings import Settings
from imageml_core.stages.train.dataset import current_inputs
from imageml_core.stages.train.training import UnknownDataset, current_training, resolve_dataset
from imageml_resources import open_manifest_store

# Stages in pipeline order and the assets each one materializes.
STAGES: dict[str, list[str]] = {
    "ingest": ["raw_images"],
    "augment": ["augmented_images"],
    "normalize": ["normalized_variants"],
    # The gold tier alone (``--until gold``): a dataset version, no training.
    "gold": ["training_shards"],
    "train": ["trained_model"],
}
STAGE1 = ("ingest", "augment")
SENSOR = "raw_objects_sensor"


@dataclass
class StageRun:
    """One in-process run: ``stage`` names the stages it ran joined by ``+`` (e.g.
    ``ingest+augment``); ``metadata`` maps asset key to its materialization metadata, plus
    ``error`` (the step failure message) when the run failed; ``failed_checks`` maps
    ``"<asset> <check>"`` to the metadata of each asset check that did not pass."""

    stage: str
    partition_key: str
    run_id: str
    success: bool
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # per asset
    # "<asset> <check>" -> the check's metadata, for every asset check that did not pass
    failed_checks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What :func:`run_pipeline` did: every run, how many materializations it mirrored into
    the manifest store, and the wall-clock time in seconds."""

    runs: list[StageRun] = field(default_factory=list)
    mirrored: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[StageRun]:
        """The runs that did not succeed."""
        return [r for r in self.runs if not r.success]


class RunInterrupted(KeyboardInterrupt):
    """A signal (SIGTERM from Kubernetes or a supervisor, SIGINT from Ctrl-C) stopped the
    one-shot run. ``summary`` holds the runs that finished before it; what they published
    is kept, and the next ``imageml run`` resumes from there."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__("interrupted")
        self.summary = summary


# Dagster turns a signal during a run into a failed step (DagsterExecutionInterruptedError)
# and returns; these error classes in a run's events mean "stop", not "go on to the next".
_INTERRUPT_ERRORS = frozenset({"DagsterExecutionInterruptedError", "KeyboardInterrupt"})


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves as Ctrl-C between runs too (Dagster maps it so only while a run
    executes): the one-shot command stops at once instead of starting the next run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(outcome: dg.ExecuteInProcessResult) -> bool:
    """Whether a run ended because a signal interrupted it."""
    for event in outcome.all_events:
        error = None
        if event.is_step_failure:
            error = event.step_failure_data.error
        elif event.is_run_failure:
            error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            if error.cls_name in _INTERRUPT_ERRORS:
                return True
            error = error.cause or error.context
    return False


def open_instance(home: Path) -> dg.DagsterInstance:
    """The Dagster instance of the embedded stack: SQLite storage under ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


def _stages_until(until: str) -> list[str]:
    if until not in STAGES:
        raise ValueError(f"--until {until!r}: stages available are {', '.join(STAGES)}")
    names = list(STAGES)
    return names[: names.index(until) + 1]


def _current_augment_keys(store: ManifestStore, resources: dict[str, Any]) -> list[AugmentKey]:
    """Every ingested batch's augment partition as it should be now: the current pipeline
    and the batch's current annotation version (a late or changed annotation file makes a
    new one, :mod:`imageml_core.manifest.annotation_versions`)."""
    tag = resources["augmentation"].get_spec().tag
    return [current_augment_key(store, m.partition_key, tag) for m in store.manifests(INGEST)]


def _augment_behind(store: ManifestStore, resources: dict[str, Any]) -> list[str]:
    """Ingested batches without an augment manifest for the current pipeline and
    annotation version."""
    return [
        k.batch_id
        for k in _current_augment_keys(store, resources)
        if store.get_manifest(AUGMENT, str(k)) is None
    ]


def _normalize_behind(store: ManifestStore, resources: dict[str, Any]) -> list[NormalizeKey]:
    """(batch, variant) partitions not published for the current policy, of every batch
    augmented with the current pipeline and annotation version."""
    policy = resources["normalization"].get_policy()
    keys = [
        NormalizeKey.of(k, v.name, policy.variant_hash(v))
        for k in _current_augment_keys(store, resources)
        if store.get_manifest(AUGMENT, str(k)) is not None
        for v in policy.variants
    ]
    return [k for k in keys if store.get_manifest(NORMALIZE, str(k)) is None]


def _gold_inputs(store: ManifestStore, settings: Settings, resources: dict[str, Any]) -> str | None:
    """The current gold inputs' fingerprint (:func:`~imageml_core.stages.train.dataset.
    current_inputs`), None when there is nothing to build from."""
    config = dataset_config(
        settings,
        resources["normalization"].get_policy(),
        resources["augmentation"].get_spec().tag,
        settings.training_uri,
    )
    return current_inputs(resources["object_store"].get_client(), store, config)


def _training_set_behind(
    store: ManifestStore, settings: Settings, resources: dict[str, Any]
) -> bool | None:
    """Whether no dataset version was built from the current inputs and settings (their
    fingerprint, read from the manifest store alone; for a curated prefix, from its
    listing). None when there is nothing to build from. Going back to earlier settings
    finds the earlier version."""
    wanted = _gold_inputs(store, settings, resources)
    if wanted is None:
        return None
    built = {
        TrainingDatasetSummary.from_json(m.details).inputs for m in store.manifests(TRAINING_SHARDS)
    }
    return wanted not in built


def _model_behind(
    store: ManifestStore, settings: Settings, resources: dict[str, Any]
) -> str | None:
    """Why a training is due (the dataset version it would train on), or None when there
    is no dataset version for the current settings or a model trained on it with this
    configuration is already recorded, whatever its day: ``imageml run`` does not retrain
    a model that is current. Raises
    :class:`~imageml_core.stages.train.training.UnknownDataset` for a ``TRAIN_DATASET``
    that names no version."""
    try:
        record = resolve_dataset(
            store, settings.train_dataset, inputs=_gold_inputs(store, settings, resources)
        )
    except UnknownDataset:
        if settings.train_dataset:
            raise
        return None
    fingerprint = training_plan(settings).fingerprint(record.partition_key)
    return None if current_training(store, fingerprint) else record.partition_key


def _recover(
    instance: dg.DagsterInstance,
    store: ManifestStore,
    resources: dict[str, Any],
    echo: Callable[[str], None],
) -> None:
    """Mend what a killed run left behind (:mod:`imageml_cli.recovery`)."""
    dead = fail_dead_runs(instance, echo)
    removed = resources["nvme"].get_staging().cleanup_runs(dead)
    if removed:
        echo(f"[recovery] removed {len(removed)} staging folder(s) of dead runs")
    policy = resources["normalization"].get_policy()
    reconcile_materializations(
        instance,
        store,
        resources["augmentation"].get_spec().tag,
        {v.name: policy.variant_hash(v) for v in policy.variants},
        echo,
    )


def run_pipeline(
    settings: Settings,
    instance: dg.DagsterInstance,
    *,
    until: str = "normalize",
    echo: Callable[[str], None] = print,
    log_level: str = "INFO",
    force: bool = False,
) -> RunSummary:
    """Run every stage up to ``until`` (a key of :data:`STAGES`) once, in process.

    New batches come from the raw-objects sensor with an empty cursor; earlier batches not yet
    augmented or normalized for the current pipeline and policy are added; the gold tier is
    rebuilt when its inputs changed; today's model (in ``TRAIN_SCHEDULE_TIMEZONE``) is
    trained unless one trained on the same dataset version and configuration exists
    (``force`` trains anyway). Materializations
    are then mirrored into the manifest store. Progress goes to ``echo``; failed runs are
    recorded in the summary, not raised. Raises ValueError for an unknown ``until``,
    :class:`~imageml_core.stages.augment.pipeline.PipelineConfigError` for a bad pipeline,
    and :class:`RunInterrupted` when SIGTERM or SIGINT arrives (no further run starts)."""
    with _sigterm_as_interrupt():
        return _run_pipeline(
            settings, instance, until=until, echo=echo, log_level=log_level, force=force
        )


def _run_pipeline(
    settings: Settings,
    instance: dg.DagsterInstance,
    *,
    until: str,
    echo: Callable[[str], None],
    log_level: str,
    force: bool = False,
) -> RunSummary:
    stages = _stages_until(until)
    started = time.monotonic()
    defs = build_definitions(settings)
    resources = build_resources(settings)
    if "augment" in stages:
        # Checks the transforms before any work (the runs execute in this process, so the
        # import is paid once).
        resources["augmentation"].get_pipeline()
    store = open_manifest_store(settings.manifest_db_url)
    job = defs.resolve_job_def(ingest_and_augment_job.name)
    summary = RunSummary()
    try:
        _recover(instance, store, resources, echo)
        _run_stages(
            defs, job, stages, instance, store, resources, settings, summary, echo, log_level, force
        )
        asset_keys = list(defs.resolve_asset_graph().get_all_asset_keys())
        summary.mirrored = mirror_materializations(instance, asset_keys, store)
    except KeyboardInterrupt as exc:
        if isinstance(exc, RunInterrupted):
            raise
        raise RunInterrupted(summary) from None
    summary.seconds = time.monotonic() - started
    return summary


def _run_stages(
    defs: dg.Definitions,
    job: dg.JobDefinition,
    stages: list[str],
    instance: dg.DagsterInstance,
    store: ManifestStore,
    resources: dict[str, Any],
    settings: Settings,
    summary: RunSummary,
    echo: Callable[[str], None],
    log_level: str,
    force: bool = False,
) -> None:
    """The sensor's run requests, the batches behind, then normalize, then the training
    dataset version, then the day's model (``force``: even if one is current): run after
    run."""

    sensor = defs.resolve_sensor_def(SENSOR)
    with dg.build_sensor_context(
        instance=instance, cursor=None, resources=resources, definitions=defs
    ) as ctx:
        result = sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    for dpr in result.dynamic_partitions_requests or []:
        new = [
            k
            for k in dpr.partition_keys
            if not instance.has_dynamic_partition(dpr.partitions_def_name, k)
        ]
        if new:
            instance.add_dynamic_partitions(dpr.partitions_def_name, new)
    stage1 = [s for s in stages if s in STAGE1]
    work: list[tuple[Any, list[str], dict[str, str]]] = [
        (str(r.partition_key), stage1, dict(r.tags)) for r in result.run_requests or []
    ]
    echo(f"[ingest] {len(work)} new batch(es)")
    _execute(job, work, instance, summary, echo, log_level)
    if "augment" in stages:
        # After the new batches: an annotation file they brought may name images of
        # earlier batches (or of a batch of this same upload augmented just before it).
        behind = _augment_behind(store, resources)
        if behind:
            echo(
                f"[augment] {len(behind)} batch(es) to catch up (a new pipeline, or "
                "annotation files that arrived or changed since they were augmented)"
            )
        catch_up = [(b, ["augment"], {"imageml/trigger": "catch-up"}) for b in behind]
        _execute(job, catch_up, instance, summary, echo, log_level)

    if "normalize" in stages:
        # After stage 1 ran: every published augment shard x every configured variant.
        pending = _normalize_behind(store, resources)
        echo(f"[normalize] {len(pending)} (batch, variant) partition(s)")
        for key in pending:
            if not instance.has_dynamic_partition(ingest_batches.name, key.batch_id):
                instance.add_dynamic_partitions(ingest_batches.name, [key.batch_id])
        normalize_work = [
            (
                dg.MultiPartitionKey({"batch": k.batch_id, "variant": k.variant}),
                ["normalize"],
                {"imageml/trigger": "run"},
            )
            for k in pending
        ]
        _execute(
            defs.resolve_job_def(NORMALIZE_JOB), normalize_work, instance, summary, echo, log_level
        )

    if "gold" in stages:
        behind = _training_set_behind(store, settings, resources)
        source = settings.train_curated_uri or "normalized"
        if behind is None:
            echo(
                f"[gold] nothing {'is normalized' if source == 'normalized' else f'in {source}'} yet: no training dataset to build"
            )
        elif behind:
            echo("[gold] building the training dataset version")
            work = [(None, ["gold"], {"imageml/trigger": "run"})]
            job_def = defs.resolve_job_def(TRAINING_SHARDS_JOB)
            _execute(job_def, work, instance, summary, echo, log_level)
        else:
            echo("[gold] the training dataset version is up to date")

    if "train" in stages:
        due = _model_behind(store, settings, resources)
        if due is None and not force:
            if store.manifests(TRAINING_SHARDS):
                echo(
                    "[train] the model is current (trained on this dataset version and configuration)"
                )
            else:
                echo("[train] no training dataset version yet: nothing to train")
            return
        day = partition_for(datetime.now(UTC), settings.train_schedule_timezone)
        echo(
            f"[train] training the {day} model{' (forced)' if force else ''} on {due or 'the dataset'}"
        )
        work = [(day, ["train"], {"imageml/trigger": "run"})]
        run_config = {"ops": {"trained_model": {"config": {"force": force}}}}
        job_def = defs.resolve_job_def(TRAINED_MODEL_JOB)
        _execute(job_def, work, instance, summary, echo, log_level, run_config)


def _execute(
    job: dg.JobDefinition,
    work: list[tuple[Any, list[str], dict[str, str]]],
    instance: dg.DagsterInstance,
    summary: RunSummary,
    echo: Callable[[str], None],
    log_level: str,
    run_config: dict[str, Any] | None = None,
) -> None:
    for n, (partition, run_stages, tags) in enumerate(work, start=1):
        selection = [dg.AssetKey(a) for s in run_stages for a in STAGES[s]]
        shown = "" if partition is None else f" {partition}"
        echo(f"[{'+'.join(run_stages)}] {n}/{len(work)}{shown} ...")
        outcome = job.execute_in_process(
            instance=instance,
            partition_key=partition,
            tags={**tags, **run_tags()},
            asset_selection=selection,
            raise_on_error=False,
            # Dagster's DEBUG engine events drown the progress lines the stages log at INFO.
            run_config={
                **(run_config or {}),
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
        )
        metadata: dict[str, dict[str, Any]] = {}
        for event in outcome.get_asset_materialization_events():
            mat = event.event_specific_data.materialization  # type: ignore[union-attr]
            metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
        if not outcome.success:
            for event in outcome.all_events:
                if event.is_step_failure and event.step_failure_data.error is not None:
                    metadata.setdefault("error", {})["message"] = (
                        event.step_failure_data.error.message.strip()
                    )
        failed_checks = {
            f"{e.asset_key.to_user_string()} {e.check_name}": {
                k: v.value for k, v in e.metadata.items()
            }
            for e in outcome.get_asset_check_evaluations()
            if not e.passed
        }
        summary.runs.append(
            StageRun(
                "+".join(run_stages),
                "" if partition is None else str(partition),
                outcome.run_id,
                outcome.success,
                metadata,
                failed_checks,
            )
        )
        if _interrupted(outcome):
            raise RunInterrupted(summary)
