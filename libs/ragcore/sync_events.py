"""The durable sync queue: Ingest's change events (SPEC §5), stored by the API, drained by
`sync`."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field
from sqlalchemy import insert
from sqlalchemy.orm import Session

from ragcore.db.models import SyncEvent
from ragcore.tasks.arguments import Args, Timestamp


class SyncEventStatus(StrEnum):
    """Where a stored event stands in the queue (`sync_events.status`)."""

    #: to apply, once `available_at` has come
    PENDING = "pending"
    #: taken by a drain until `claimed_until` (a crashed drain's claim expires)
    CLAIMED = "claimed"
    #: applied, or dropped as older than what was applied
    DONE = "done"
    #: out of attempts: an operator's
    FAILED = "failed"


class ChangeEvent(Args):
    document_id: str = Field(min_length=1, max_length=512)
    action: Literal["upsert", "delete"]
    occurred_at: Timestamp


class ChangeEvents(Args):
    events: list[ChangeEvent] = Field(min_length=1, max_length=10_000)


def store(session: Session, events: list[ChangeEvent]) -> int:
    """Append events to the queue in the caller's transaction; returns how many were stored."""
    session.execute(
        insert(SyncEvent),
        [{**e.model_dump(), "status": SyncEventStatus.PENDING} for e in events],
    )
    return len(events)
