"""What the overview page shows, read from the broker, the breakers and the ledger; and its
pictures, which load as images of their own, from Beat's snapshot of the ledger's last hour
(ragcore.tasks.ledger.snapshot; aggregated for the request when there is none recent)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.console import charts, deadletters
from ragcore.broker import broker_client, depths, heartbeats
from ragcore.clients.breaker import breaker
from ragcore.db import utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries import DeliveryStatus
from ragcore.settings import Settings
from ragcore.tasks import contracts
from ragcore.tasks.activity import WINDOW, failed_since
from ragcore.tasks.ledger import snapshot


@dataclass(frozen=True)
class QueueRow:
    stats: depths.QueueStats
    #: Seconds since a consumer of the queue last took a task (None: none has yet).
    last_dequeue_age: float | None


@dataclass(frozen=True)
class Overview:
    queues: list[QueueRow]
    breakers: dict[str, str]
    deliveries: dict[str, int]
    failed_last_hour: int
    since: datetime
    dead_letters: int


def _queues(settings: Settings) -> tuple[redis.Redis, list[depths.QueueStats]]:
    client = broker_client(settings.redis)
    ttl = heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
    return client, depths.all_queue_stats(client, ttl)


def _last_dequeue_age(client: redis.Redis, consumers: list[str], now: float) -> float | None:
    stamps = []
    for host in consumers:
        record = heartbeats.worker_record(client, host) or {}
        if record.get("last_dequeue"):
            stamps.append(float(record["last_dequeue"]))
    return now - max(stamps) if stamps else None


def read(settings: Settings, session: Session) -> Overview:
    client, stats = _queues(settings)
    now = time.time()
    since = utcnow() - WINDOW
    counts = dict(
        session.execute(
            select(FailedDelivery.status, func.count())
            .where(FailedDelivery.status.in_((DeliveryStatus.WAITING, DeliveryStatus.FAILED)))
            .group_by(FailedDelivery.status)
        ).all()
    )
    return Overview(
        queues=[QueueRow(s, _last_dequeue_age(client, s.consumers, now)) for s in stats],
        breakers={n: breaker(n, settings).state for n in contracts.neighbours()},
        deliveries={
            s.value: int(counts.get(s, 0)) for s in (DeliveryStatus.WAITING, DeliveryStatus.FAILED)
        },
        failed_last_hour=failed_since(session, since),
        since=since,
        dead_letters=deadletters.count(session),
    )


def queues_picture(settings: Settings, session: Session) -> str:
    _, stats = _queues(settings)
    activity, _ = snapshot.recent_activity(session, settings.api.metrics_snapshot_seconds, utcnow())
    return charts.queues_picture(activity, {s.name: s.depth for s in stats})


def durations_picture(settings: Settings, session: Session) -> str:
    window, _ = snapshot.recent_window(
        session,
        settings.api.metrics_window_seconds,
        settings.api.metrics_snapshot_seconds,
        utcnow(),
    )
    durations = sorted(window.durations, key=lambda d: d.name)
    return charts.durations_picture(durations, settings.api.metrics_window_seconds)
