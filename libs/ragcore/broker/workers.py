"""The workers as the API sees them: a bounded broadcast to ask them, and since when one is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Celery

from ragcore.broker import heartbeats
from ragcore.broker.client import broker_client
from ragcore.db.models import TaskRecord
from ragcore.settings import Settings
from ragcore.tasks.states import TaskState


def ask(celery: Celery, settings: Settings, *methods: str) -> list[dict[str, Any]]:
    """Ask every worker, all `methods` of Celery's inspect at once; one dict (worker -> reply) per
    method. Stops waiting once each worker with a current heartbeat answered, or at the timeout."""
    try:
        client = broker_client(settings.redis)
        ttl = heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
        expected = len(heartbeats.live_workers(client, ttl))
    except redis.RedisError:
        expected = 0  # the broadcast below says whether the broker is reachable
    inspect = celery.control.inspect(
        timeout=settings.workers.inspect_timeout_seconds, limit=expected or None
    )
    # In parallel: the wait for silent workers is paid once, not per method (kombu's reply queue
    # is per thread, so the answers do not mix).
    with ThreadPoolExecutor(max_workers=len(methods)) as pool:
        replies = pool.map(lambda method: getattr(inspect, method)(), methods)
        return [reply or {} for reply in replies]


def lost_since(client: redis.Redis, record: TaskRecord) -> datetime | None:
    """When the worker running `record` last beat, if that worker is lost (its heartbeat stopped);
    None while it beats (or while the broker is down: nothing is known of the worker then)."""
    if record.state != TaskState.STARTED or not record.worker or not record.queue:
        return None
    try:
        if heartbeats.worker_record(client, record.worker) is not None:
            return None
        last = heartbeats.last_heartbeat(client, record.queue, record.worker)
    except redis.RedisError:
        return None
    # No heartbeat left: already re-queued (it waits for a worker) or a warm shutdown handed it
    # back.
    return datetime.fromtimestamp(last, UTC) if last is not None else record.started_at
