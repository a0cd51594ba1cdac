"""Waiting deliveries go out again by themselves: on their backoff, or all at once when a probe
succeeds.

Beat's `delivery-redriver` thread (`Redriver`) calls `redrive_due` every round. Per neighbour:
while its breaker is closed, every waiting delivery whose `next_attempt_at` has come is published;
while it is open, only one, the probe, once the probe interval has passed. A probe that succeeds
closes the breaker and makes every waiting delivery of the neighbour due (`release_waiting`), so
they go out on the next round.
Rows are locked while published, so two Beats send each once. A re-drive resolves its row by its
outcome, not by its publish: the row keeps waiting, with the task id (`redrive_task_id`) and its
next attempt one backoff away. The re-driven task carries the row id (`REDRIVE_HEADER`): it marks
the row `redriven` when it delivers, or reschedules it when it fails. When the row comes due again
the ledger tells its re-drive's outcome: SUCCESS resolves it (the task's own mark was lost),
unfinished leaves it waiting one more backoff (the reconciler re-publishes a task the broker lost),
anything else (FAILURE, REVOKED, no row) sends it again. A row the re-driver cannot send (its task
has no contract, its payload no longer validates) is set aside as `failed` with the reason, and the
others go. Users de-duplicates by the idempotency key, which the recorded payload pins.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

import redis
from celery import Celery
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ragcore import tracing
from ragcore.background import PeriodicThread
from ragcore.clients.breaker import CLOSED, breaker
from ragcore.db import Sessions, rows_affected, session_scope, utcnow
from ragcore.db.models import FailedDelivery, TaskRecord
from ragcore.deliveries.policy import next_attempt, window_start
from ragcore.deliveries.status import DeliveryStatus
from ragcore.settings import DeliverySettings, Settings
from ragcore.tasks import contracts, dispatch, ledger
from ragcore.tasks.states import UNFINISHED, TaskState

log = logging.getLogger(__name__)

#: Message header of a re-drive: the id of the failed-delivery row it belongs to.
REDRIVE_HEADER = "ragcore_redrive"


def release_waiting(neighbour: str, sessions: Sessions = session_scope) -> int:
    """Make every waiting delivery of `neighbour` due now (its breaker just closed)."""
    with sessions() as session:
        return rows_affected(
            session,
            update(FailedDelivery)
            .where(
                FailedDelivery.status == DeliveryStatus.WAITING,
                FailedDelivery.task_name.in_(contracts.deliveries_to(neighbour)),
            )
            .values(next_attempt_at=utcnow())
            .execution_options(synchronize_session=False),
        )


class Unsendable(Exception):
    """A delivery's row cannot be sent again: its task has no contract or its payload no longer
    validates."""


def publish(
    app: Celery, row: FailedDelivery, policy: DeliverySettings, now: datetime, task_id: str
) -> None:
    """Send `row`'s task again as `task_id` and leave the row waiting for that outcome.

    Raises Unsendable (no contract), pydantic's ValidationError (a payload the contract refuses)
    and dispatch.PublishFailed, each with nothing sent and nothing marked.
    """
    contract = contracts.BY_NAME.get(row.task_name)
    if contract is None:
        raise Unsendable(f"task {row.task_name!r} has no contract (renamed or removed)")
    headers: dict[str, object] = {REDRIVE_HEADER: row.id, ledger.RECORDED_HEADER: True}
    if row.traceparent:  # the re-drive's task span links to the first attempt's
        headers[tracing.LINK_HEADER] = row.traceparent
    with tracing.span("delivery.redrive", links=(row.traceparent,), delivery_id=row.id):
        dispatch.send(app, contract, row.payload, task_id=task_id, headers=headers)
    since = row.waiting_since or now
    row.waiting_since, row.redriven_at, row.redrive_task_id = since, now, task_id
    row.status, row.next_attempt_at = DeliveryStatus.WAITING, next_attempt(policy, since, now)


def in_flight(session: Session, rows: Sequence[FailedDelivery]) -> dict[str, TaskState]:
    """The ledger's state of each row's latest re-drive (absent: never re-driven, or its task
    vanished)."""
    ids = [row.redrive_task_id for row in rows if row.redrive_task_id]
    if not ids:
        return {}
    found = session.execute(
        select(TaskRecord.task_id, TaskRecord.state).where(TaskRecord.task_id.in_(ids))
    )
    return {task_id: TaskState(state) for task_id, state in found}


def set_aside(row: FailedDelivery, reason: str) -> None:
    """A row that cannot be sent again waits for an operator, with the reason, instead of stopping
    every round."""
    row.status, row.next_attempt_at = DeliveryStatus.FAILED, None
    row.error = f"not re-driven: {reason}"
    log.error("delivery %s set aside for an operator: %s", row.id, reason)


def _set_aside_unknown(sessions: Sessions) -> None:
    """Waiting rows of a task no delivery contract names (renamed, removed) are never selected by a
    neighbour's round: they are set aside instead of waiting unseen."""
    known = [name for n in contracts.neighbours() for name in contracts.deliveries_to(n)]
    with sessions() as session:
        rows = session.scalars(
            select(FailedDelivery)
            .where(
                FailedDelivery.status == DeliveryStatus.WAITING,
                FailedDelivery.task_name.not_in(known),
            )
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            set_aside(row, f"task {row.task_name!r} has no delivery contract (renamed or removed)")


def _expire(policy: DeliverySettings, sessions: Sessions, now: datetime) -> None:
    """Waiting deliveries older than the window stop being re-driven: an operator decides."""
    with sessions() as session:
        expired = rows_affected(
            session,
            update(FailedDelivery)
            .where(
                FailedDelivery.status == DeliveryStatus.WAITING,
                FailedDelivery.waiting_since < window_start(policy, now),
            )
            .values(status=DeliveryStatus.FAILED, next_attempt_at=None)
            .execution_options(synchronize_session=False),
        )
    if expired:
        log.error(
            "%d waiting deliveries gave up after %.0fs of re-drives; they wait for an operator",
            expired,
            policy.window_seconds,
        )


_ANY_WAITING = (
    select(FailedDelivery.id).where(FailedDelivery.status == DeliveryStatus.WAITING).limit(1)
)


def redrive_due(
    app: Celery, settings: Settings, limit: int = 500, sessions: Sessions = session_scope
) -> int:
    """Publish the deliveries that are due (see the module docstring); returns how many.

    A round with nothing waiting (nearly all of them) is one SELECT: every step below only acts
    on waiting rows."""
    with sessions() as session:
        if session.scalar(_ANY_WAITING) is None:
            return 0
    now = utcnow()
    _set_aside_unknown(sessions)
    _expire(settings.deliveries, sessions, now)
    sent = 0
    for neighbour in contracts.neighbours():
        if not contracts.deliveries_to(neighbour):
            continue
        try:
            gate = breaker(neighbour, settings)
            # pybreaker reads a Redis it cannot reach as "closed": nothing to decide without it
            gate.ping()
            closed = gate.state == CLOSED
            if not closed and not gate.probe_due(now):
                continue  # the rest wait for the probe
        except redis.RedisError:
            return sent  # the broker is down: the relay says so; these wait for it as well
        with sessions() as session:
            query = (
                select(FailedDelivery)
                .where(
                    FailedDelivery.status == DeliveryStatus.WAITING,
                    FailedDelivery.task_name.in_(contracts.deliveries_to(neighbour)),
                )
                .order_by(FailedDelivery.next_attempt_at, FailedDelivery.id)
                .with_for_update(skip_locked=True)
            )
            # While open the probe is the oldest waiting delivery, whatever its own backoff says.
            query = (
                query.where(FailedDelivery.next_attempt_at <= now).limit(limit)
                if closed
                else query.limit(1)
            )
            rows = session.scalars(query).all()
            outcomes = in_flight(session, rows)
            for row in rows:
                outcome = outcomes.get(row.redrive_task_id or "")
                if outcome == TaskState.SUCCESS:  # delivered; the task could not mark it itself
                    row.status, row.next_attempt_at = DeliveryStatus.REDRIVEN, None
                    continue
                if outcome in UNFINISHED:  # still on its way: one more backoff before another
                    row.next_attempt_at = next_attempt(
                        settings.deliveries, row.waiting_since or now, now
                    )
                    continue
                task_id = str(uuid.uuid4())
                if not closed and not gate.claim_probe(task_id):
                    break  # another process sent a probe just now
                try:
                    publish(app, row, settings.deliveries, now, task_id)
                except Unsendable as exc:
                    set_aside(row, str(exc))
                    continue
                except ValidationError as exc:
                    set_aside(row, f"its payload no longer validates for {row.task_name}: {exc}")
                    continue
                # the broker is down: the rest wait for the next round
                except dispatch.PublishFailed as exc:
                    log.warning("re-drive of delivery %s failed, will retry: %s", row.id, exc)
                    break
                sent += 1
    if sent:
        log.info("re-drove %d waiting deliveries", sent)
    return sent


class Redriver(PeriodicThread):
    """Beat's `delivery-redriver` thread: `redrive_due` every `interval` seconds."""

    def __init__(self, app: Celery, settings: Settings, interval: float) -> None:
        super().__init__(
            "delivery-redriver",
            interval,
            lambda: redrive_due(app, settings),
            counted="deliveries_redriven",
        )
