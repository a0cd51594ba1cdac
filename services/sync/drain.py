"""Draining the sync queue: claim events, coalesce them per document, apply, and settle."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ragcore.db import rows_affected, session_scope, utcnow
from ragcore.db.models import SyncDocument, SyncEvent
from ragcore.sync_events import SyncEventStatus

log = logging.getLogger(__name__)

CLAIM_SECONDS = 600  # a claim of a run that crashed is taken over after this
MAX_ATTEMPTS = 10  # then the event stays `failed` for an operator to look at


class DocumentBusy(Exception):
    """Another run is applying this document right now: try again shortly, not as a failure."""


class StaleEvent(Exception):
    """A newer event of this document was applied already (this one failed, waited, and came due
    late)."""


#: What applies a document's latest event: (document id, action, occurred_at).
Apply = Callable[[str, str, datetime], None]


@dataclass
class DrainReport:
    claimed: int = 0
    documents: int = 0
    applied: int = 0
    failed: int = 0
    stale: int = 0  # dropped: older than what was applied for their document
    released: int = 0  # claimed, then handed back unfinished when the run's time ran out


def check_not_stale(session: Session, document_id: str, occurred_at: datetime) -> None:
    """Raise StaleEvent if a newer event of the document was applied; call it under the document's
    lock."""
    applied = session.get(SyncDocument, document_id)
    if applied is not None and applied.applied_occurred_at > occurred_at:
        raise StaleEvent(
            f"{document_id}: event of {occurred_at.isoformat()} is older than the applied "
            f"{applied.applied_occurred_at.isoformat()}"
        )


def record_applied(session: Session, document_id: str, occurred_at: datetime) -> None:
    """Note the event as the document's newest applied one; call it under the document's lock."""
    applied = session.get(SyncDocument, document_id)
    if applied is None:
        session.add(SyncDocument(document_id=document_id, applied_occurred_at=occurred_at))
    elif occurred_at > applied.applied_occurred_at:
        applied.applied_occurred_at = occurred_at


def claim(token: str, batch: int) -> list[SyncEvent]:
    """Claim up to `batch` due events under `token`; concurrent runs never claim the same event.

    On PostgreSQL the candidate rows are locked with SKIP LOCKED, so a second run takes others; the
    status guard in the UPDATE makes the claim atomic on SQLite too.
    """
    now = utcnow()
    claimable = or_(
        (SyncEvent.status == SyncEventStatus.PENDING) & (SyncEvent.available_at <= now),
        (SyncEvent.status == SyncEventStatus.CLAIMED) & (SyncEvent.claimed_until < now),
    )
    with session_scope() as session:
        ids = (
            select(SyncEvent.id)
            .where(claimable)
            .order_by(SyncEvent.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        ).scalar_subquery()
        session.execute(
            update(SyncEvent)
            .where(SyncEvent.id.in_(ids), claimable)
            .values(
                status=SyncEventStatus.CLAIMED,
                claimed_by=token,
                claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
            )
            .execution_options(synchronize_session=False)
        )
    with session_scope() as session:
        return list(
            session.scalars(
                select(SyncEvent).where(
                    SyncEvent.claimed_by == token, SyncEvent.status == SyncEventStatus.CLAIMED
                )
            )
        )


def coalesce(events: list[SyncEvent]) -> dict[str, SyncEvent]:
    """document id → its latest event (by occurred_at, then arrival)."""
    latest: dict[str, SyncEvent] = {}
    for event in events:
        current = latest.get(event.document_id)
        if current is None or (event.occurred_at, event.id) > (current.occurred_at, current.id):
            latest[event.document_id] = event
    return latest


def release(token: str) -> int:
    """Hand back what `token` claimed and did not finish: due at once, no attempt counted."""
    with session_scope() as session:
        return rows_affected(
            session,
            update(SyncEvent)
            .where(SyncEvent.claimed_by == token, SyncEvent.status == SyncEventStatus.CLAIMED)
            .values(status=SyncEventStatus.PENDING, claimed_until=None, available_at=utcnow()),
        )


def settle(token: str, document_id: str, error: Exception | None) -> None:
    """Mark a document's claimed events done, or back to pending with a delay after a failure."""
    with session_scope() as session:
        mine = (
            (SyncEvent.claimed_by == token)
            & (SyncEvent.document_id == document_id)
            & (SyncEvent.status == SyncEventStatus.CLAIMED)
        )
        if error is None:
            session.execute(
                update(SyncEvent)
                .where(mine)
                .values(status=SyncEventStatus.DONE, claimed_until=None, last_error=None)
            )
            return
        if isinstance(error, DocumentBusy):
            session.execute(
                update(SyncEvent)
                .where(mine)
                .values(
                    status=SyncEventStatus.PENDING,
                    claimed_until=None,
                    available_at=utcnow() + timedelta(seconds=5),
                )
            )
            return
        for event in session.scalars(select(SyncEvent).where(mine)):
            event.attempts += 1
            event.last_error = f"{type(error).__name__}: {error}"[:2000]
            event.status = (
                SyncEventStatus.FAILED
                if event.attempts >= MAX_ATTEMPTS
                else SyncEventStatus.PENDING
            )
            event.available_at = utcnow() + timedelta(seconds=min(3600, 30 * 2**event.attempts))
            event.claimed_until = None


def drain(
    apply: Apply, batch: int = 200, max_batches: int = 50, claim_until: float | None = None
) -> DrainReport:
    """Claim, coalesce and apply batches until the queue has nothing due (or `max_batches`).

    No batch is claimed after `claim_until` (time.monotonic()). When the task's soft time limit
    interrupts it, what this run claimed and did not finish goes back to pending at once: the time
    ran out, the events did not fail, and they must not wait out CLAIM_SECONDS.
    """
    report = DrainReport()
    token = uuid.uuid4().hex  # one per run: every batch is settled before the next is claimed
    try:
        for _ in range(max_batches):
            if claim_until is not None and time.monotonic() >= claim_until:
                break
            events = claim(token, batch)
            if not events:
                break
            report.claimed += len(events)
            for document_id, event in coalesce(events).items():
                report.documents += 1
                try:
                    apply(document_id, event.action, event.occurred_at)
                except StaleEvent as exc:
                    log.info("dropped a stale sync event: %s", exc)
                    settle(token, document_id, None)
                    report.stale += 1
                except DocumentBusy as exc:
                    settle(token, document_id, exc)
                except SoftTimeLimitExceeded:
                    raise
                except Exception as exc:  # one document's failure must not stop the others
                    log.warning("sync event for %s failed, retrying later: %s", document_id, exc)
                    settle(token, document_id, exc)
                    report.failed += 1
                else:
                    settle(token, document_id, None)
                    report.applied += 1
    except SoftTimeLimitExceeded:
        report.released = release(token)
        log.warning(
            "soft time limit reached: %d claimed event(s) handed back unfinished", report.released
        )
    return report
