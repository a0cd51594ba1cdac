"""Each queue's activity over a recent window, from the ledger: how many tasks waited at each step
and how many finished in between (the console's charts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ragcore.db.models import TaskRecord
from ragcore.tasks.states import TaskState

#: The console's queues picture: the last hour, in steps of 5 minutes.
WINDOW = timedelta(hours=1)
STEPS = 12


@dataclass(frozen=True)
class QueueActivity:
    queue: str
    #: The end of each step, oldest first.
    ends: list[datetime]
    #: Tasks sent and not yet started (nor ended) at each step's end.
    waiting: list[int]
    #: Tasks that finished within each step.
    finished: list[int]


def queue_activity(
    session: Session, queues: Sequence[str], now: datetime, window: timedelta, steps: int
) -> dict[str, QueueActivity]:
    """Per queue of `queues`, `steps` equal steps of `window` ending at `now`, in one pass over the
    tasks sent within the window (a task sent before it is not counted).

    Naming the queues lets PostgreSQL read one range of the (queue, sent_at) index per queue, which
    INCLUDEs both other timestamps: no row of the table is read (docs/benchmarks.md).
    """
    step = window / steps
    starts = [now - window + step * i for i in range(steps)]
    ends = [start + step for start in starts]
    sent, started, finished = TaskRecord.sent_at, TaskRecord.started_at, TaskRecord.finished_at
    waiting = [
        func.count().filter(
            and_(
                sent < end,
                or_(started.is_(None), started >= end),
                or_(finished.is_(None), finished >= end),
            )
        )
        for end in ends
    ]
    done = [
        func.count().filter(and_(finished >= start, finished < end))
        for start, end in zip(starts, ends, strict=True)
    ]
    query = (
        select(TaskRecord.queue, *waiting, *done)
        .where(TaskRecord.queue.in_(queues), sent >= now - window)
        .group_by(TaskRecord.queue)
    )
    found: dict[str, QueueActivity] = {}
    for queue, *counts in session.execute(query):
        found[str(queue)] = QueueActivity(
            str(queue),
            ends,
            [int(n) for n in counts[:steps]],
            [int(n) for n in counts[steps:]],
        )
    return found


def failed_since(session: Session, since: datetime) -> int:
    """Tasks sent since `since` that failed (read from the (state, sent_at) index)."""
    query = select(func.count()).where(
        TaskRecord.state == TaskState.FAILURE, TaskRecord.sent_at >= since
    )
    return int(session.scalar(query) or 0)
