"""The daily training schedule fires at 21:00 America/New_York and requests that day's
partition, across both DST changes (evaluated by Dagster at chosen instants)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from imageml_assets.definitions import build_definitions
from imageml_assets.defs.train import TRAINED_MODEL_JOB
from imageml_assets.defs.train.schedule import DAILY_TRAINING_SCHEDULE, training_days
from imageml_core.settings import ConfigError, Settings

NY = ZoneInfo("America/New_York")


def _defs(env: dict[str, str] | None = None) -> dg.Definitions:
    """The code location's real definitions (the schedule targets trained_model_job)."""
    return build_definitions(Settings.from_env(env or {}))


def _schedule(env: dict[str, str] | None = None) -> dg.ScheduleDefinition:
    return _defs(env).resolve_schedule_def(DAILY_TRAINING_SCHEDULE)


def _next_fires(schedule: dg.ScheduleDefinition, after: datetime, n: int) -> list[datetime]:
    """The next ``n`` fire instants after ``after``, as Dagster's scheduler computes them."""
    it = cron_string_iterator(
        after.timestamp(), schedule.cron_schedule, schedule.execution_timezone
    )
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize(
    ("after", "expected_utc_hours"),
    [
        # Spring forward 2026-03-08 02:00 EST -> EDT: 21:00 EST is 02:00 UTC, EDT 01:00 UTC.
        (datetime(2026, 3, 6, 12, tzinfo=NY), [2, 2, 1, 1]),
        # Fall back 2026-11-01 02:00 EDT -> EST.
        (datetime(2026, 10, 30, 12, tzinfo=NY), [1, 1, 2, 2]),
    ],
)
def test_fires_at_21_local_across_dst(after: datetime, expected_utc_hours: list[int]) -> None:
    schedule = _schedule()
    fires = _next_fires(schedule, after, 4)
    assert [f.astimezone(NY).hour for f in fires] == [21] * 4
    assert [f.astimezone(NY).minute for f in fires] == [0] * 4
    assert [f.astimezone(UTC).hour for f in fires] == expected_utc_hours
    days = [f.astimezone(NY).date() for f in fires]
    assert [(d - days[0]).days for d in days] == [0, 1, 2, 3]  # once a day, none skipped


@pytest.mark.parametrize(
    "local",
    [
        datetime(2026, 3, 7, 21, tzinfo=NY),  # the evening before spring forward
        datetime(2026, 3, 8, 21, tzinfo=NY),  # the day of spring forward
        datetime(2026, 10, 31, 21, tzinfo=NY),
        datetime(2026, 11, 1, 21, tzinfo=NY),  # the day of fall back
        datetime(2026, 12, 31, 21, tzinfo=NY),  # 02:00 UTC is already next year
    ],
)
def test_a_tick_requests_that_days_partition(local: datetime) -> None:
    defs = _defs()
    schedule = defs.resolve_schedule_def(DAILY_TRAINING_SCHEDULE)
    assert schedule.job_name == TRAINED_MODEL_JOB
    # Dagster hands the tick its scheduled instant; give it in UTC as the daemon does.
    context = dg.build_schedule_context(
        scheduled_execution_time=local.astimezone(UTC), repository_def=defs.get_repository_def()
    )
    data = schedule.evaluate_tick(context)
    assert data.run_requests is not None and len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.partition_key == local.strftime("%Y-%m-%d")
    assert request.run_key == f"trained_model:{local:%Y-%m-%d}"
    # The partition exists when the schedule fires (today's, not only yesterday's).
    keys = training_days(Settings.from_env({})).get_partition_keys(current_time=local)
    assert request.partition_key == keys[-1]


def test_schedule_is_configurable() -> None:
    schedule = _schedule(
        {"TRAIN_SCHEDULE_CRON": "30 6 * * 1-5", "TRAIN_SCHEDULE_TIMEZONE": "Europe/Paris"}
    )
    assert schedule.name == DAILY_TRAINING_SCHEDULE
    fires = _next_fires(schedule, datetime(2026, 11, 27, 12, tzinfo=UTC), 2)  # a Friday
    paris = [f.astimezone(ZoneInfo("Europe/Paris")) for f in fires]
    assert [(p.weekday(), p.hour, p.minute) for p in paris] == [(0, 6, 30), (1, 6, 30)]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TRAIN_SCHEDULE_CRON": "61 21 * * *"}, "TRAIN_SCHEDULE_CRON"),
        ({"TRAIN_SCHEDULE_CRON": "0 21 *"}, "TRAIN_SCHEDULE_CRON"),
        ({"TRAIN_SCHEDULE_TIMEZONE": "America/Gotham"}, "TRAIN_SCHEDULE_TIMEZONE"),
    ],
)
def test_a_bad_schedule_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        _schedule(env)
