"""Is a worker consuming, not just alive? The answer behind each worker image's liveness probe.

A worker is healthy when it answers a ping (its consumer loop runs) and its queue does not wait on
it: the queue is empty, or the worker dequeued a message within the window, or every one of its pool
slots is busy (a long task is not a stall; time limits end stuck ones). The last dequeue and the
busy slots come from the heartbeat the worker keeps in the broker's Redis
(ragcore.broker.heartbeats).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from ragcore.broker import broker_client, depths, heartbeats
from ragcore.settings import Settings


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str


def evaluate(
    *, answered_ping: bool, depth: int, record: dict[str, Any] | None, window: float, now: float
) -> Health:
    """The verdict from what was observed (pure, so every case is unit-tested)."""
    if not answered_ping:
        return Health(False, "the worker did not answer a ping")
    if depth == 0:
        return Health(True, "queue empty")
    if record is None:
        return Health(False, f"{depth} task(s) wait and the worker keeps no heartbeat")
    idle = now - float(record.get("last_dequeue") or record.get("started_at") or 0)
    if idle <= window:
        return Health(True, f"dequeued {idle:.0f}s ago")
    if int(record.get("active", 0)) >= int(record.get("concurrency", 1)):
        return Health(True, "every pool slot is busy")
    return Health(
        False,
        f"{depth} task(s) wait but the worker dequeued nothing for {idle:.0f}s "
        f"(window {window:.0f}s)",
    )


def check(app: Celery, settings: Settings, hostname: str, queue: str) -> Health:
    """Ping the worker, read its queue and its heartbeat, and judge."""
    replies = app.control.ping(
        destination=[hostname], timeout=max(settings.workers.inspect_timeout_seconds, 2.0)
    )
    answered = any(hostname in reply for reply in replies)
    client = broker_client(settings.redis)
    ttl = heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
    depth = depths.queue_stats(client, queue, ttl).depth
    record = heartbeats.worker_record(client, hostname)
    return evaluate(
        answered_ping=answered,
        depth=depth,
        record=record,
        window=settings.workers.dequeue_window_seconds,
        now=time.time(),
    )
