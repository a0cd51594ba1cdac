"""Draining the sync queue: claim events, coalesce them per document, apply, and settle."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update

from ragcore.db import session_scope, utcnow
from ragcore.db.models import SyncEvent

log = logging.getLogger(__name__)

CLAIM_SECONDS = 600  # a claim of a run that crashed is taken over after this
MAX_ATTEMPTS = 10  # then the event stays `failed` for an operator to look at


class DocumentBusy(Exception):
    """Another run is applying this document right now: try again shortly, not as a failure."""


@dataclass
class DrainReport:
    claimed: int = 0
    documents: int = 0
    applied: int = 0
    failed: int = 0


def claim(batch: int) -> tuple[str, list[SyncEvent]]:
    """Claim up to `batch` due events; concurrent runs never claim the same event.

    On PostgreSQL the candidate rows are locked with SKIP LOCKED, so a second run takes others; the
    status guard in the UPDATE makes the claim atomic on SQLite too.
    """
    token = uuid.uuid4().hex
    now = utcnow()
    claimable = or_(
        (SyncEvent.status == "pending") & (SyncEvent.available_at <= now),
        (SyncEvent.status == "claimed") & (SyncEvent.claimed_until < now),
    )
    with session_scope() as session:
        ids = (
            select(SyncEvent.id).where(claimable).order_by(SyncEvent.id).limit(batch).with_for_update(skip_locked=True)
        ).scalar_subquery()
        session.execute(
            update(SyncEvent)
            .where(SyncEvent.id.in_(ids), claimable)
            .values(status="claimed", claimed_by=token, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            .execution_options(synchronize_session=False)
        )
    with session_scope() as session:
        events = list(session.scalars(select(SyncEvent).where(SyncEvent.claimed_by == token, SyncEvent.status == "claimed")))
    return token, events


def coalesce(events: list[SyncEvent]) -> dict[str, str]:
    """document id → the action of its latest event (by occurred_at, then arrival)."""
    latest: dict[str, SyncEvent] = {}
    for event in events:
        current = latest.get(event.document_id)
        if current is None or (event.occurred_at, event.id) > (current.occurred_at, current.id):
            latest[event.document_id] = event
    return {doc: event.action for doc, event in latest.items()}


def settle(token: str, document_id: str, error: Exception | None) -> None:
    """Mark a document's claimed events done, or back to pending with a delay after a failure."""
    with session_scope() as session:
        mine = (SyncEvent.claimed_by == token) & (SyncEvent.document_id == document_id) & (SyncEvent.status == "claimed")
        if error is None:
            session.execute(update(SyncEvent).where(mine).values(status="done", claimed_until=None, last_error=None))
            return
        if isinstance(error, DocumentBusy):
            session.execute(update(SyncEvent).where(mine).values(status="pending", claimed_until=None,
                                                                 available_at=utcnow() + timedelta(seconds=5)))
            return
        for event in session.scalars(select(SyncEvent).where(mine)):
            event.attempts += 1
            event.last_error = f"{type(error).__name__}: {error}"[:2000]
            event.status = "failed" if event.attempts >= MAX_ATTEMPTS else "pending"
            event.available_at = utcnow() + timedelta(seconds=min(3600, 30 * 2**event.attempts))
            event.claimed_until = None


def drain(apply: Callable[[str, str], None], batch: int = 200, max_batches: int = 50) -> DrainReport:
    """Claim, coalesce and apply batches until the queue has nothing due (or `max_batches`)."""
    report = DrainReport()
    for _ in range(max_batches):
        token, events = claim(batch)
        if not events:
            break
        report.claimed += len(events)
        for document_id, action in coalesce(events).items():
            report.documents += 1
            try:
                apply(document_id, action)
            except DocumentBusy as exc:
                settle(token, document_id, exc)
            except Exception as exc:  # one document's failure must not stop the others
                log.warning("sync event for %s failed, retrying later: %s", document_id, exc)
                settle(token, document_id, exc)
                report.failed += 1
            else:
                settle(token, document_id, None)
                report.applied += 1
    return report
