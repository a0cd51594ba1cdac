"""The periodic entries of SPEC §2, built from settings and the task contracts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import crontab, schedule

from ragcore.settings import Settings
from ragcore.tasks.contracts import contract


def parse(spec: str) -> crontab | schedule:
    """`"0 2 * * *"` → a crontab; `"300"` → every 300 seconds."""
    fields = spec.split()
    if len(fields) == 1:
        return schedule(timedelta(seconds=float(fields[0])))
    if len(fields) != 5:
        raise ValueError(f"schedule {spec!r} is neither seconds nor a 5-field crontab")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(minute, hour, day_of_week, day_of_month, month_of_year)


def period_seconds(when: crontab | schedule) -> float:
    """Seconds between two consecutive runs (for a crontab: the first two after now, minute
    steps)."""
    if isinstance(when, schedule) and not isinstance(when, crontab):
        return float(when.seconds)
    fires: list[datetime] = []
    t = datetime.now(UTC).replace(second=0, microsecond=0)
    while len(fires) < 2:
        t += timedelta(minutes=1)
        if (
            t.minute in when.minute
            and t.hour in when.hour
            and t.day in when.day_of_month
            and t.month in when.month_of_year
            and t.isoweekday() % 7 in when.day_of_week
        ):
            fires.append(t)
    return (fires[1] - fires[0]).total_seconds()


def _expires(when: crontab | schedule) -> float:
    # A run still queued after most of its period is stale: the next one does the same work.
    return max(1.0, min(period_seconds(when) * 0.9, 3600.0))


def build(settings: Settings) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for name, spec in settings.beat.schedule.items():
        task = contract(name)
        when = parse(spec)
        entries[name] = {
            "task": task.name,
            "schedule": when,
            "kwargs": task.validate({}),
            "options": {"queue": task.queue.value, "expires": _expires(when)},
        }
    return entries
