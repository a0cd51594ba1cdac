"""The ledger's aggregates behind /metrics: counts and run times of the tasks sent in a window, and
a task's last success."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db.models import TaskRecord
from ragcore.tasks.states import TaskState

#: Upper bounds (seconds) of the task duration buckets: sub-second notifications to hour-long syncs.
DURATION_BOUNDS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)


def last_success(session: Session, name: str) -> TaskRecord | None:
    """The most recently sent run of task `name` that succeeded (its result, when it finished)."""
    query = (
        select(TaskRecord)
        .where(TaskRecord.name == name, TaskRecord.state == TaskState.SUCCESS)
        .order_by(TaskRecord.sent_at.desc())
        .limit(1)
    )
    return session.scalars(query).first()


@dataclass(frozen=True)
class Durations:
    """How long the finished tasks of one name ran: cumulative counts per upper bound, sum,
    count."""

    name: str
    buckets: list[tuple[float, int]]
    total_seconds: float
    count: int


@dataclass(frozen=True)
class Window:
    """The tasks sent since a time: how many per (name, state), and how long the finished ran."""

    counts: list[tuple[str, str, int]]
    durations: list[Durations]


def window(session: Session, since: datetime, bounds: Sequence[float]) -> Window:
    """Counts and run times of the tasks sent since `since`, in one pass over the window.

    On PostgreSQL the pass reads only the (sent_at, task_id) index, which INCLUDEs the columns
    read here; `run_seconds` is written only when a task succeeds or fails.
    """
    run = TaskRecord.run_seconds
    columns = [func.count(run).filter(run <= b) for b in bounds]
    query = (
        select(
            TaskRecord.name,
            TaskRecord.state,
            func.count(),
            func.count(run),
            func.coalesce(func.sum(run), 0.0),
            *columns,
        )
        # Ids revoked before any worker saw them have no name: not a task anyone ran.
        .where(TaskRecord.sent_at >= since, TaskRecord.name.is_not(None))
        .group_by(TaskRecord.name, TaskRecord.state)
    )
    counts: list[tuple[str, str, int]] = []
    runs: dict[str, tuple[int, float, list[int]]] = {}
    for name, state, count, finished, total, *cumulative in session.execute(query):
        counts.append((str(name), state, int(count)))
        if finished:
            before = runs.get(str(name), (0, 0.0, [0] * len(bounds)))
            runs[str(name)] = (
                before[0] + int(finished),
                before[1] + float(total or 0.0),
                [a + int(b) for a, b in zip(before[2], cumulative, strict=False)],
            )
    durations = [
        Durations(name, list(zip(bounds, cumulative, strict=False)), total, count)
        for name, (count, total, cumulative) in runs.items()
    ]
    return Window(counts, durations)
