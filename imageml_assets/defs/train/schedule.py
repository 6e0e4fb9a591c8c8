"""The daily training partitions and the schedule that materializes the day's partition."""

from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from imageml_core.settings import ConfigError, Settings

#: First daily partition of ``trained_model`` (backfills start here).
PARTITIONS_START = "2026-01-01"
DAILY_TRAINING_SCHEDULE = "daily_training_schedule"


def training_days(settings: Settings) -> dg.DailyPartitionsDefinition:
    """One partition per day in ``TRAIN_SCHEDULE_TIMEZONE`` (default America/New_York,
    spec 000). ``end_offset=1`` makes today's partition exist before the day ends, so the
    21:00 run trains *today's* partition rather than yesterday's."""
    return dg.DailyPartitionsDefinition(
        start_date=PARTITIONS_START, timezone=settings.train_schedule_timezone, end_offset=1
    )


def partition_for(when: datetime, timezone: str) -> str:
    """The daily partition key (``YYYY-MM-DD``) of instant ``when`` in ``timezone``."""
    return when.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d")


def build_training_schedule(
    settings: Settings, job: dg.JobDefinition | UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    """``daily_training_schedule``: at ``TRAIN_SCHEDULE_CRON`` (default ``0 21 * * *``) in
    ``TRAIN_SCHEDULE_TIMEZONE``, one run of ``job`` for the day's partition (the run key is
    the day: Dagster launches it once). Dagster evaluates cron in the given zone, so 21:00
    stays 21:00 local across DST changes. Raises :class:`ConfigError` for a cron string
    Dagster refuses."""
    tz = settings.train_schedule_timezone

    def daily_training(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        day = partition_for(context.scheduled_execution_time, tz)
        return dg.RunRequest(run_key=f"trained_model:{day}", partition_key=day)

    try:
        return dg.ScheduleDefinition(
            name=DAILY_TRAINING_SCHEDULE,
            cron_schedule=settings.train_schedule_cron,
            execution_timezone=tz,
            job=job,
            execution_fn=daily_training,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=(
                f"Trains the day's partition of trained_model at "
                f"{settings.train_schedule_cron!r} {tz}."
            ),
        )
    except dg.DagsterInvalidDefinitionError as exc:
        raise ConfigError(
            f"TRAIN_SCHEDULE_CRON={settings.train_schedule_cron!r} is not a valid cron "
            f"expression: {str(exc).splitlines()[0]}"
        ) from None
