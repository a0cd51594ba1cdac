"""Waiting deliveries go out again by themselves: on their backoff, or all at once when a probe
succeeds.

Beat's `delivery-redriver` thread (`Redriver`) calls `redrive_due` every round. Per neighbour:
while its breaker is closed, every waiting delivery whose `next_attempt_at` has come is published;
while it is open, only one, the probe, once the probe interval has passed. A probe that succeeds
closes the breaker and makes every waiting delivery of the neighbour due (`release_waiting`), so
they go out on the next round.
Rows are locked while published and marked `redriven` with the task id, so two Beats send each
once; the re-driven task carries the row id (`REDRIVE_HEADER`) and puts the row back to waiting if
it fails again. Users de-duplicates by the idempotency key, which the recorded payload pins.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import redis
from celery import Celery
from sqlalchemy import select, update

from ragcore import tracing
from ragcore.background import PeriodicThread
from ragcore.clients.breaker import CLOSED, breaker
from ragcore.db import Sessions, rows_affected, session_scope, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries.policy import window_start
from ragcore.deliveries.status import DeliveryStatus
from ragcore.settings import Settings
from ragcore.tasks import contracts, dispatch, ledger

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


def _expire(settings: Settings, sessions: Sessions, now: datetime) -> None:
    """Waiting deliveries older than the window stop being re-driven: an operator decides."""
    with sessions() as session:
        expired = rows_affected(
            session,
            update(FailedDelivery)
            .where(
                FailedDelivery.status == DeliveryStatus.WAITING,
                FailedDelivery.waiting_since < window_start(settings, now),
            )
            .values(status=DeliveryStatus.FAILED, next_attempt_at=None)
            .execution_options(synchronize_session=False),
        )
    if expired:
        log.error(
            "%d waiting deliveries gave up after %.0fs of re-drives; they wait for an operator",
            expired,
            settings.delivery_redrive_window_seconds,
        )


def redrive_due(
    app: Celery, settings: Settings, limit: int = 500, sessions: Sessions = session_scope
) -> int:
    """Publish the deliveries that are due (see the module docstring); returns how many."""
    now = utcnow()
    _expire(settings, sessions, now)
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
            for row in session.scalars(query):
                task_id = str(uuid.uuid4())
                if not closed and not gate.claim_probe(task_id):
                    break  # another process sent a probe just now
                headers: dict[str, object] = {REDRIVE_HEADER: row.id, ledger.RECORDED_HEADER: True}
                if row.traceparent:  # the re-drive's task span links to the first attempt's
                    headers[tracing.LINK_HEADER] = row.traceparent
                try:
                    with tracing.span(
                        "delivery.redrive", links=(row.traceparent,), delivery_id=row.id
                    ):
                        dispatch.send(
                            app,
                            contracts.contract(row.task_name),
                            row.payload,
                            task_id=task_id,
                            headers=headers,
                        )
                # the broker is down: the rest wait for the next round
                except dispatch.PublishFailed as exc:
                    log.warning("re-drive of delivery %s failed, will retry: %s", row.id, exc)
                    break
                row.status, row.redriven_at, row.redrive_task_id = (
                    DeliveryStatus.REDRIVEN,
                    now,
                    task_id,
                )
                sent += 1
    if sent:
        log.info("re-drove %d waiting deliveries", sent)
    return sent


class Redriver(PeriodicThread):
    """Beat's `delivery-redriver` thread: `redrive_due` every `interval` seconds."""

    def __init__(self, app: Celery, settings: Settings, interval: float) -> None:
        super().__init__("delivery-redriver", interval, lambda: redrive_due(app, settings))
