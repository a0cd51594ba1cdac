"""Queue depths: what waits in each queue, since when, and who consumes and holds its tasks.

Celery's Redis transport keeps a queue as Redis lists: one named after the queue, and one per higher
priority step (`<queue>\\x06\\x16<step>`). A message is pushed on the left and taken from the right,
so the oldest waiting message is the rightmost; its headers carry the publish time that
`stamp_sent_at` adds to every task this code base publishes. Which workers consume a queue is their
heartbeat (`ragcore.broker.heartbeats`), so no broadcast is needed to count them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from ragcore.broker.heartbeats import BEATS_KEY, CONSUMERS_KEY, server_time
from ragcore.broker.in_flight import HELD_KEY, IN_FLIGHT_KEY
from ragcore.tasks.contracts import Queue

SENT_AT_HEADER = "sent_at"
#: kombu's Redis transport: separator and priority steps (0 is the bare queue name).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def stamp_sent_at(headers: dict[str, Any]) -> None:
    """Mark a message with its publish time (epoch seconds); a retry is a new publish."""
    headers[SENT_AT_HEADER] = time.time()


def list_names(queue: str) -> list[str]:
    return [queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)]


def message_sent_at(raw: bytes | str | None) -> float | None:
    """The publish time stamped in a transport message, or None (unstamped, or not JSON)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)["headers"][SENT_AT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class QueueStats:
    name: str
    depth: int
    #: Age of the oldest waiting message, None when the queue is empty (or it was not stamped).
    oldest_age_seconds: float | None
    consumers: list[str] = field(default_factory=list)
    #: Tasks the queue's workers hold (running or reserved ahead).
    in_flight: int = 0
    #: Lost workers (heartbeat stopped) holding tasks not re-queued yet: (hostname, last heartbeat).
    lost: list[tuple[str, float]] = field(default_factory=list)
    #: Age of the stalest heartbeat among the consumers, None without consumers.
    stalest_heartbeat_age_seconds: float | None = None

    @property
    def unconsumed(self) -> bool:
        return not self.consumers


def queue_stats(
    client: redis.Redis, queue: str, heartbeat_ttl: float, now: float | None = None
) -> QueueStats:
    # heartbeats are stamped on the Redis server's clock (ragcore.broker.heartbeats)
    now = server_time(client) if now is None else now
    pipe = client.pipeline(transaction=False)
    for name in list_names(queue):
        pipe.llen(name)
        pipe.lindex(name, -1)
    pipe.zrangebyscore(
        CONSUMERS_KEY.format(queue=queue), now - heartbeat_ttl, "+inf", withscores=True
    )
    pipe.llen(IN_FLIGHT_KEY.format(queue=queue))
    pipe.zrangebyscore(BEATS_KEY.format(queue=queue), "-inf", now - heartbeat_ttl, withscores=True)
    pipe.hkeys(HELD_KEY.format(queue=queue))
    *replies, consumers, held, stopped, holders = pipe.execute()
    depth = sum(int(n) for n in replies[0::2])
    stamps = [t for t in (message_sent_at(raw) for raw in replies[1::2]) if t is not None]
    oldest = max(0.0, now - min(stamps)) if depth and stamps else None
    # A gone worker that held nothing leaves nothing to wait for: only the ones whose tasks wait
    # count.
    lost = [(host.decode(), float(at)) for host, at in stopped if host in set(holders)]
    stalest = max(0.0, now - min(at for _, at in consumers)) if consumers else None
    return QueueStats(
        queue, depth, oldest, sorted(c.decode() for c, _ in consumers), int(held), lost, stalest
    )


def all_queue_stats(client: redis.Redis, heartbeat_ttl: float) -> list[QueueStats]:
    now = server_time(client)
    return [queue_stats(client, q.value, heartbeat_ttl, now) for q in Queue]
