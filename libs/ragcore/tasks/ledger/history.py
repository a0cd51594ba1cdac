"""History pages of the ledger: newest first, filtered, with cursors that say where a page ended."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from ragcore.db.models import TaskRecord
from ragcore.tasks.states import TaskState

#: A history cursor: the last row's sent_at in microseconds since the epoch, ".", its task id. A
#: shape the OpenAPI document can state whole: every string it admits is a cursor the ledger can use
#: (16 digits reach the year 2286).
CURSOR_PATTERN = r"^[0-9]{1,16}\.[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(record: TaskRecord) -> str:
    return f"{(record.sent_at - _EPOCH) // timedelta(microseconds=1)}.{record.task_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (sent_at, task_id) a cursor points after; ValueError for anything else."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValueError("invalid cursor")
    micros, _, task_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), task_id


def history(
    session: Session,
    *,
    name: str | None = None,
    state: TaskState | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    queue: str | None = None,
    worker: str | None = None,
    id_prefix: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[TaskRecord], str | None]:
    """Tasks newest first, filtered; the cursor of the next page, or None on the last one.

    Name, state, queue and worker each have an index in page order, an id prefix the primary key
    (the console's filters, measured in docs/benchmarks.md).
    """
    query = select(TaskRecord)
    if name is not None:
        query = query.where(TaskRecord.name == name)
    if queue is not None:
        query = query.where(TaskRecord.queue == queue)
    if worker is not None:
        query = query.where(TaskRecord.worker == worker)
    if id_prefix:
        # A range of the primary key, which its index answers at any ledger size (ids compare
        # bytewise in the C and C.UTF-8 collations), then the prefix test itself.
        beyond = id_prefix[:-1] + chr(ord(id_prefix[-1]) + 1)
        query = query.where(
            TaskRecord.task_id >= id_prefix,
            TaskRecord.task_id < beyond,
            TaskRecord.task_id.startswith(id_prefix, autoescape=True),
        )
    if until is not None:
        query = query.where(TaskRecord.sent_at < until)
    if state == TaskState.PROGRESS:  # the ledger keeps STARTED and the progress itself
        query = query.where(TaskRecord.state == TaskState.STARTED, TaskRecord.progress.is_not(None))
    elif state is not None:
        query = query.where(TaskRecord.state == state)
    if since is not None:
        query = query.where(TaskRecord.sent_at >= since)
    if cursor is not None:
        sent_at, task_id = decode_cursor(cursor)
        # A row comparison: the index on (…, sent_at, task_id) starts right after the cursor.
        after = tuple_(TaskRecord.sent_at, TaskRecord.task_id) < tuple_(sent_at, task_id)
        query = query.where(after)
    rows = list(
        session.scalars(
            query.order_by(TaskRecord.sent_at.desc(), TaskRecord.task_id.desc()).limit(limit + 1)
        )
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
