"""`imageml`: demo, one-shot runs, lineage, and the embedded dev stack."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from imageml_cli.runner import RunInterrupted, RunSummary
from imageml_core.manifest import redacted
from imageml_core.settings import ConfigError, Settings
from imageml_core.stages.augment.pipeline import PipelineConfigError
from imageml_core.stages.ingest.archives import InvalidArchive
from imageml_core.stages.ingest.batch import UnknownBatch
from imageml_core.stages.train.tracking import TrackingError
from imageml_core.stages.train.training import UnknownDataset
from imageml_core.storage.staging import InsufficientStagingSpace
from imageml_core.uris import InvalidS3Uri
from imageml_dev.embedded_s3 import EmbeddedServiceError

_USER_ERRORS = (
    ConfigError,
    InvalidS3Uri,
    InsufficientStagingSpace,
    EmbeddedServiceError,
    UnknownBatch,
    InvalidArchive,
    PipelineConfigError,
    TrackingError,
    UnknownDataset,
)


def _home(path: str | None, leaf: str) -> Path:
    base = Path(path or os.environ.get("IMAGEML_HOME") or Path.cwd() / ".imageml")
    return base / leaf if leaf else base


# Exit status after SIGINT/SIGTERM stopped a run: 128 + SIGINT, the shell's convention.
EXIT_INTERRUPTED = 130


class _Cli(click.Group):
    """Turns the errors a user can cause into one clear line and exit code 2, and a
    stopping signal into a short account of what finished (exit code 130)."""

    def invoke(self, ctx: click.Context) -> object:
        # SIGTERM (what Kubernetes and `timeout` send) stops a command as Ctrl-C does, at
        # any point of it: set up, between runs, while the summary prints.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None
        except RunInterrupted as exc:
            done = sum(r.success for r in exc.summary.runs)
            click.echo(
                f"Interrupted: {done} run(s) finished and are kept; no further run was "
                "started. Run the same command again to resume.",
                err=True,
            )
            ctx.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            click.echo(
                "Interrupted before any run started; nothing was changed. Run the same "
                "command again to start.",
                err=True,
            )
            ctx.exit(EXIT_INTERRUPTED)
        finally:
            signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Cli)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def cli(verbose: bool) -> None:
    """ImageML: image-ML data pipeline on Dagster."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")


def _print_summary(summary: RunSummary, echo: Callable[[str], None] = click.echo) -> None:
    for run in summary.runs:
        echo(f"  {run.stage:<15} {run.partition_key}  {'ok' if run.success else 'FAILED'}")
        for asset, meta in sorted(run.metadata.items()):
            if asset == "error":
                echo(f"      error: {meta['message']}")
                continue
            # Counts only; Dagster's own keys (dagster/row_count) repeat one of them.
            shown = {
                k: v
                for k, v in meta.items()
                if isinstance(v, int | float)
                and not isinstance(v, bool)
                and not k.startswith("dagster/")
            }
            echo(f"      {asset}: {shown}")
            if "manifest_uri" in meta:
                echo(f"      manifest: {meta['manifest_uri']}")
        for check, meta in sorted(run.failed_checks.items()):
            # The findings themselves (lists of URIs, quarantine reasons), first few of each.
            found = {k: v for k, v in meta.items() if isinstance(v, list | dict) and v}
            echo(
                f"      check FAILED {check}"
                + (f": {meta['reason']}" if meta.get("reason") else "")
            )
            for key, value in found.items():
                items = list(value.items()) if isinstance(value, dict) else list(value)
                for item in items[:3]:
                    echo(f"        {key}: {': '.join(item) if isinstance(item, tuple) else item}")
                if len(items) > 3:
                    echo(f"        {key}: ... {len(items) - 3} more")
    echo(f"  mirrored {summary.mirrored} Dagster materialization(s) into the manifest store")
    echo(f"  {len(summary.runs)} run(s) in {summary.seconds:.1f} s")


#: The demo's training: brief, on the small synthetic set (environment values win).
DEMO_TRAINING = {"train_epochs": 100, "train_max_minutes": 2.0, "train_val_fraction": 0.25}


@cli.command()
@click.option(
    "--images",
    default=24,
    show_default=True,
    help="Synthetic images to generate (plus a ZIP of 5).",
)
@click.option(
    "--home", type=click.Path(file_okay=False), help="Working directory [default: ./.imageml/demo]."
)
@click.option(
    "--keep", is_flag=True, help="Keep the previous demo's state instead of starting fresh."
)
@click.option("--until", default=None, help="Last stage to run [default: every stage that exists].")
def demo(images: int, home: str | None, keep: bool, until: str | None) -> None:
    """Generate a labelled image set and run every stage on embedded services."""
    from imageml_cli.runner import STAGES, open_instance, run_pipeline
    from imageml_core.manifest import (
        AUGMENT,
        INGEST,
        NORMALIZE,
        STATUS_QUARANTINED,
        TRAIN,
        TRAINING_SHARDS,
    )
    from imageml_core.manifest.documents import TrainedModelManifest, TrainingDatasetSummary
    from imageml_core.storage.object_store import ObjectStore
    from imageml_core.uris import parse_s3_uri
    from imageml_dev.stack import embedded_stack
    from imageml_dev.synthetic import generate_dataset
    from imageml_resources.manifest_store import open_manifest_store

    work = Path(home) if home else _home(None, "demo")
    if work.exists() and not keep:
        shutil.rmtree(work)
    started = time.monotonic()
    click.echo(f"ImageML demo in {work}")
    last = until or list(STAGES)[-1]
    if last not in STAGES:
        raise click.BadParameter(f"stages available: {', '.join(STAGES)}", param_hint="--until")
    training = "train" in list(STAGES)[: list(STAGES).index(last) + 1]
    with embedded_stack(work, mlflow=training) as settings:
        # A brief training on the small synthetic set, unless the environment says otherwise.
        settings = settings.with_overrides(
            **{
                name: value
                for name, value in DEMO_TRAINING.items()
                if not os.environ.get(name.upper(), "").strip()
            }
        )
        click.echo(
            f"  S3 (SeaweedFS) at {settings.s3_endpoint_url}; manifest store "
            f"{redacted(settings.manifest_db_url)}"
        )
        local = work / "synthetic"
        files = generate_dataset(local, images=images)
        store = ObjectStore(settings.s3_endpoint_url, max_concurrency=settings.s3_max_concurrency)
        store.upload_many([(local / f, settings.raw_uri.join("synthetic", str(f))) for f in files])
        click.echo(f"  uploaded {len(files)} raw objects to {settings.raw_uri}/synthetic/")
        instance = open_instance(work / "dagster")
        summary = run_pipeline(settings, instance, until=last, echo=lambda m: click.echo(f"  {m}"))
        _print_summary(summary)
        click.echo("  second pass (nothing is new, so nothing runs):")
        again = run_pipeline(settings, instance, until=last, echo=lambda m: click.echo(f"  {m}"))
        manifest = open_manifest_store(settings.manifest_db_url)
        ingested = manifest.processed_objects(INGEST)
        quarantined = [r for r in ingested if r.status == STATUS_QUARANTINED]
        registered = [r for r in ingested if r.ok]
        click.echo(
            f"\nSummary: {len(manifest.manifests(INGEST))} ingest batch(es), {len(registered)} objects "
            f"registered, {len(quarantined)} quarantined, {len(manifest.processed_objects(AUGMENT))} "
            f"augmented images, {len(manifest.processed_objects(NORMALIZE))} normalized variants"
        )
        for r in quarantined:
            click.echo(f"  quarantined {r.uri}: {r.reason}")
        for d in manifest.manifests(TRAINING_SHARDS)[-1:]:
            counts = TrainingDatasetSummary.from_json(d.details).counts
            click.echo(
                f"  training dataset {d.partition_key}: {counts.get('train', 0)} train / "
                f"{counts.get('val', 0)} val images, {d.manifest_uri}"
            )
        for t in manifest.manifests(TRAIN)[-1:]:
            model = TrainedModelManifest.from_bytes(
                store.get_bytes(parse_s3_uri(str(t.manifest_uri)))
            )
            figures = ", ".join(f"{k} {v:.3f}" for k, v in sorted(model.metrics.items()))
            champion = "champion" if model.promotion.get("promoted") else "not promoted"
            click.echo(
                f"  model {model.registered_model} version {model.model_version} "
                f"({champion}: {model.promotion.get('reason', '')}): {figures}"
            )
            click.echo(
                f"    MLflow run {model.run_id}, model models:/{model.registered_model}"
                f"@{settings.promotion_alias} (the demo's MLflow server stops with it: "
                "`imageml dev` keeps one running)"
            )
        click.echo(f"  rerun launched {len(again.runs)} run(s)")
        click.echo(
            f"  lineage example: imageml lineage --home {work} {settings.raw_uri}/synthetic/shapes-archive.zip"
        )
        instance.dispose()
        if summary.failed:
            raise click.ClickException(f"{len(summary.failed)} run(s) failed")
    click.echo(f"Done in {time.monotonic() - started:.1f} s; services stopped.")


@cli.command()
@click.option("--until", default=None, help="Last stage to run [default: the last stage].")
@click.option(
    "--sizes", default=None, help="Size variants for stage 2 (overrides NORMALIZE_SIZES)."
)
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Embedded Dagster home when DAGSTER_HOME is unset.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Train today's model even if one trained on the same dataset version and "
    "configuration exists.",
)
def run(until: str | None, sizes: str | None, home: str | None, force: bool) -> None:
    """Process whatever is new now, through the sensors' own definitions (for cron, CI, debugging)."""
    import dagster as dg

    from imageml_cli.runner import STAGES, open_instance, run_pipeline

    until = until or list(STAGES)[-1]
    if until not in STAGES:
        raise click.BadParameter(f"stages available: {', '.join(STAGES)}", param_hint="--until")
    settings = Settings.from_env(home=_home(home, ""))
    if sizes:
        try:
            settings = settings.with_overrides(normalize_sizes=sizes)
        except ConfigError as exc:
            raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--sizes") from None
    instance = (
        dg.DagsterInstance.get()
        if os.environ.get("DAGSTER_HOME")
        else open_instance(_home(home, "dagster"))
    )
    summary = run_pipeline(settings, instance, until=until, echo=click.echo, force=force)
    _print_summary(summary)
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} run(s) failed")


@cli.command()
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON.")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    help="Embedded home (for its SQLite manifest store).",
)
def lineage(uri: str, as_json: bool, home: str | None) -> None:
    """The chain from a source object to every output, and back."""
    from imageml_resources.manifest_store import open_manifest_store

    settings = Settings.from_env(home=_home(home, ""))
    store = open_manifest_store(settings.manifest_db_url)
    found = store.lineage(uri)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2, sort_keys=True, default=str))
        return
    if found.empty:
        raise click.ClickException(
            f"{uri} is not in the manifest store at {redacted(settings.manifest_db_url)}"
        )
    click.echo(uri)
    for r in found.records:
        why = f" ({r.reason})" if r.reason else ""
        click.echo(
            f"  stage {r.stage} {r.step}: {r.status}{why}  batch {r.partition_key}  etag {r.etag}"
        )
    for e in found.upstream:
        click.echo(f"  <- {e.input_uri}  (stage {e.stage} {e.step}, run {e.run_id})")
    for e in found.downstream:
        click.echo(f"  -> {e.output_uri}  (stage {e.stage} {e.step}, run {e.run_id})")
    annotation_file = any(
        r.ok and r.details.get("kind") in ("annotation", "label_config") for r in found.records
    )
    if annotation_file and not found.downstream:
        click.echo(
            "  not applied yet: no batch with images in its folder has been augmented since "
            "it arrived (it is applied when one is: the next `imageml run`, or the "
            "annotation_changes_sensor)"
        )


@cli.command()
@click.argument("version")
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Registered model [default: REGISTERED_MODEL_NAME, else imageml-<TRAIN_TASK>].",
)
def promote(version: str, model_name: str | None) -> None:
    """Point the promotion alias (PROMOTION_ALIAS, default champion) at VERSION by hand:
    the manual override of the promotion gate."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from imageml_core.stages.train.tracking import check_reachable, redact_uri, set_champion

    settings = Settings.from_env()
    if not settings.mlflow_tracking_uri:
        raise click.ClickException("MLFLOW_TRACKING_URI is not set: name the MLflow server")
    check_reachable(settings.mlflow_tracking_uri)
    name = model_name or settings.registered_model
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)
    try:
        decision = set_champion(client, name, version, alias=settings.promotion_alias)
    except MlflowException as exc:
        raise click.ClickException(
            f"cannot promote {name} version {version} at "
            f"{redact_uri(settings.mlflow_tracking_uri)}: {str(exc).splitlines()[0]}"
        ) from None
    before = decision.champion_version or "none"
    click.echo(f"{name}@{settings.promotion_alias} -> version {version} (was {before})")


@cli.command()
@click.option(
    "--home", type=click.Path(file_okay=False), help="Working directory [default: ./.imageml/dev]."
)
@click.option("--port", default=3000, show_default=True, help="Dagster UI port (loopback).")
@click.option("--s3-port", default=8333, show_default=True, help="S3 port (a free one if taken).")
def dev(home: str | None, port: int, s3_port: int) -> None:
    """Embedded services plus the Dagster UI, until Ctrl-C."""
    from imageml_cli.runner import open_instance
    from imageml_dev.stack import embedded_stack

    work = Path(home) if home else _home(None, "dev")
    with embedded_stack(work, s3_port=s3_port) as settings:
        dagster_home = work / "dagster"
        open_instance(dagster_home).dispose()
        env = dict(os.environ, DAGSTER_HOME=str(dagster_home), **settings.to_env())
        click.echo(
            f"S3 at {settings.s3_endpoint_url} (key {env['AWS_ACCESS_KEY_ID']}); raw prefix {settings.raw_uri}"
        )
        click.echo(f"MLflow UI at {settings.mlflow_tracking_uri}")
        click.echo(f"Dagster UI at http://127.0.0.1:{port}  (Ctrl-C stops everything)")
        # Own process group: `dagster dev` ignores SIGTERM from a non-interactive parent.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-m",
                "imageml_assets.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    cli()
