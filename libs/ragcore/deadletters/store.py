"""Dead letters in the database: recorded once per distinct poison message (its count raised when
it comes again), paged, read and discarded by an operator, summed for /metrics."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ragcore.db import insert_for, rows_affected, session_scope, utcnow
from ragcore.db.models import DeadLetter

log = logging.getLogger(__name__)

#: Bytes of a raw body kept: enough to see what a buggy client sent, bounded so that a flood of
#: large poison cannot fill the database (the whole body's size and hash are kept).
BODY_LIMIT = 4096
#: Characters of the error kept (a validation error lists every field).
DETAIL_LIMIT = 2000


class Reason(StrEnum):
    """Why a message is a dead letter."""

    #: Not a transport message: not JSON, not UTF-8, not a message envelope, or a body that cannot
    #: be decoded (bad base64, a compression that fails, content that is not what it says).
    UNDECODABLE = "undecodable"
    #: A task message in a shape Celery cannot run (no id or arguments, a content type refused).
    INVALID_MESSAGE = "invalid_message"
    #: Names no task this worker registers.
    UNKNOWN_TASK = "unknown_task"
    #: A registered task whose arguments fail its contract (the task also ends FAILURE).
    INVALID_ARGUMENTS = "invalid_arguments"


@dataclass(frozen=True)
class Poison:
    """One poison message as a worker saw it."""

    queue: str
    reason: Reason
    body: bytes
    detail: str
    task_name: str | None = None
    task_id: str | None = None

    def digest(self) -> str:
        parts = (self.queue, self.reason.value, self.task_name or "")
        head = "\0".join(parts).encode()
        return hashlib.sha256(head + b"\0" + self.body).hexdigest()


def record(poison: Poison) -> None:
    """Store `poison` (or count it again) and log it the first time; never raises.

    With the database down the message cannot be kept: it is logged whole (bounded) instead, so it
    is never dropped silently, and the worker goes on either way.
    """
    try:
        with session_scope() as session:
            letter_id, count = _upsert(session, poison)
    except Exception as exc:
        log.error(
            "dead letter on %s not stored (%s: %s): %s, %s; body %r",
            poison.queue,
            type(exc).__name__,
            exc,
            poison.reason.value,
            poison.detail[:DETAIL_LIMIT],
            poison.body[:BODY_LIMIT],
        )
        return
    if count == 1:
        log.warning(
            "dead letter %d on %s: %s: %s",
            letter_id,
            poison.queue,
            poison.reason.value,
            poison.detail[:DETAIL_LIMIT],
            extra={"dead_letter_id": letter_id, "task_name": poison.task_name},
        )


def _upsert(session: Session, poison: Poison) -> tuple[int, int]:
    now = utcnow()
    statement = insert_for(session)(DeadLetter).values(
        digest=poison.digest(),
        queue=poison.queue[:64],
        reason=poison.reason.value,
        task_name=(poison.task_name or None) and poison.task_name[:128],
        task_id=(poison.task_id or None) and poison.task_id[:64],
        detail=poison.detail[:DETAIL_LIMIT],
        body=poison.body[:BODY_LIMIT],
        body_bytes=len(poison.body),
        count=1,
        first_seen_at=now,
        last_seen_at=now,
    )
    # One statement, so two workers seeing the same poison at once count it twice, not fail.
    statement = statement.on_conflict_do_update(
        index_elements=["digest"],
        set_={
            "count": DeadLetter.count + 1,
            "last_seen_at": statement.excluded.last_seen_at,
            "task_id": statement.excluded.task_id,
        },
    ).returning(DeadLetter.id, DeadLetter.count)
    letter_id, count = cast(tuple[int, int], session.execute(statement).one().tuple())
    return letter_id, count


def page(
    session: Session,
    limit: int,
    before: int | None = None,
    queue: str | None = None,
    reason: Reason | None = None,
) -> tuple[Sequence[DeadLetter], int | None]:
    """Dead letters newest first (by id), up to `limit`, below id `before`; and the next cursor."""
    where = []
    if before is not None:
        where.append(DeadLetter.id < before)
    if queue is not None:
        where.append(DeadLetter.queue == queue)
    if reason is not None:
        where.append(DeadLetter.reason == reason.value)
    rows = session.scalars(
        select(DeadLetter).where(*where).order_by(DeadLetter.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def get(session: Session, letter_id: int) -> DeadLetter | None:
    return session.get(DeadLetter, letter_id)


def discard(session: Session, letter_id: int) -> bool:
    """Delete one dead letter; False if there was none."""
    return rows_affected(session, delete(DeadLetter).where(DeadLetter.id == letter_id)) > 0


@dataclass(frozen=True)
class Totals:
    queue: str
    reason: str
    letters: int
    messages: int


def totals(session: Session) -> list[Totals]:
    """Dead letters and the messages they stand for, by queue and reason (for /metrics)."""
    rows = session.execute(
        select(DeadLetter.queue, DeadLetter.reason, func.count(), func.sum(DeadLetter.count))
        .group_by(DeadLetter.queue, DeadLetter.reason)
        .order_by(DeadLetter.queue, DeadLetter.reason)
    ).all()
    return [Totals(q, r, int(n), int(m or 0)) for q, r, n, m in rows]
