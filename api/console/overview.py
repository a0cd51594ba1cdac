"""What the overview page shows, read from the broker, the breakers and the ledger; and its
pictures, which read the ledger's last hour and load as images of their own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.console import charts, deadletters
from api.routers.metrics import DURATION_BOUNDS
from ragcore.broker import broker_client, depths, heartbeats
from ragcore.clients.breaker import breaker
from ragcore.db import utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries import DeliveryStatus
from ragcore.settings import Settings
from ragcore.tasks import contracts, ledger
from ragcore.tasks.activity import failed_since, queue_activity

#: The pictures' window and its steps (5 minutes each); "failed in the last hour" too.
WINDOW = timedelta(hours=1)
STEPS = 12
#: How long a drawn picture is shown again. Drawing reads every task of the window from an index
#: (as long as /metrics takes at 83,000 tasks an hour: docs/benchmarks.md), so each API process
#: draws each picture at most this often, however many operators look.
PICTURE_SECONDS = 10.0


class Recent:
    """The last drawing of each picture, reused while it is younger than PICTURE_SECONDS; one
    drawing at a time (a second request waits for it instead of reading the ledger again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drawn: dict[tuple[str, ...], tuple[float, str]] = {}

    def get(self, key: tuple[str, ...], draw: Callable[[], str]) -> str:
        with self._lock:
            at, picture = self._drawn.get(key, (0.0, ""))
            if time.monotonic() - at >= PICTURE_SECONDS:
                picture = draw()
                self._drawn[key] = (time.monotonic(), picture)
            return picture

    def clear(self) -> None:
        with self._lock:
            self._drawn.clear()


recent = Recent()


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
    def draw() -> str:
        _, stats = _queues(settings)
        activity = queue_activity(session, [s.name for s in stats], utcnow(), WINDOW, STEPS)
        return charts.queues_picture(activity, {s.name: s.depth for s in stats})

    return recent.get(("queues", settings.database_url, settings.redis.broker), draw)


def durations_picture(settings: Settings, session: Session) -> str:
    def draw() -> str:
        window = ledger.window(session, utcnow() - WINDOW, DURATION_BOUNDS)
        return charts.durations_picture(sorted(window.durations, key=lambda d: d.name))

    return recent.get(("durations", settings.database_url), draw)
