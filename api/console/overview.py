"""What the overview page shows, read from the broker, the breakers and the ledger."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.console import charts, deadletters
from api.routers.metrics import DURATION_BOUNDS
from ragcore.broker import queue_stats
from ragcore.clients.breaker import breaker
from ragcore.db import utcnow
from ragcore.db.models import FailedDelivery
from ragcore.settings import Settings
from ragcore.tasks import contracts, ledger
from ragcore.tasks.activity import queue_activity
from ragcore.tasks.redrive import FAILED, WAITING

#: The charts' window and its steps (5 minutes each).
WINDOW = timedelta(hours=1)
STEPS = 12


@dataclass(frozen=True)
class QueueRow:
    stats: queue_stats.QueueStats
    #: Seconds since a consumer of the queue last took a task (None: none has yet).
    last_dequeue_age: float | None
    chart: str


@dataclass(frozen=True)
class Histogram:
    name: str
    count: int
    chart: str


@dataclass
class Overview:
    queues: list[QueueRow]
    breakers: dict[str, str]
    deliveries: dict[str, int]
    failed_last_hour: int
    since: datetime
    dead_letters: int | None
    histograms: list[Histogram] = field(default_factory=list)


def _last_dequeue_age(client: redis.Redis, consumers: list[str], now: float) -> float | None:
    stamps = []
    for host in consumers:
        record = queue_stats.worker_record(client, host) or {}
        if record.get("last_dequeue"):
            stamps.append(float(record["last_dequeue"]))
    return now - max(stamps) if stamps else None


def read(settings: Settings, session: Session) -> Overview:
    client = queue_stats.broker_client(settings.broker)
    stats = queue_stats.all_queue_stats(
        client, queue_stats.heartbeat_ttl(settings.worker_heartbeat_seconds)
    )
    now = utcnow()
    since = now - WINDOW
    activity = queue_activity(session, now, WINDOW, STEPS)
    queues = [
        QueueRow(
            s,
            _last_dequeue_age(client, s.consumers, time.time()),
            charts.queue_chart(activity.get(s.name), s.depth),
        )
        for s in stats
    ]
    window = ledger.window(session, since, DURATION_BOUNDS)
    counts = dict(
        session.execute(
            select(FailedDelivery.status, func.count())
            .where(FailedDelivery.status.in_((WAITING, FAILED)))
            .group_by(FailedDelivery.status)
        ).all()
    )
    return Overview(
        queues=queues,
        breakers={n: breaker(n, settings).state for n in contracts.neighbours()},
        deliveries={WAITING: int(counts.get(WAITING, 0)), FAILED: int(counts.get(FAILED, 0))},
        failed_last_hour=sum(n for _, state, n in window.counts if state == "FAILURE"),
        since=since,
        dead_letters=deadletters.count(session),
        histograms=[
            Histogram(d.name, d.count, charts.duration_histogram(d))
            for d in sorted(window.durations, key=lambda d: d.name)
        ],
    )
