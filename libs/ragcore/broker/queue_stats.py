"""The broker seen from outside: what waits in each queue, since when, and which workers consume it.

Celery's Redis transport keeps a queue as Redis lists: one named after the queue, and one per higher
priority step (`<queue>\\x06\\x16<step>`). A message is pushed on the left and taken from the right,
so the oldest waiting message is the rightmost; its headers carry the publish time that
`stamp_sent_at` adds to every task this code base publishes. Which workers consume a queue is their
heartbeat, kept here by each worker (see ragcore.worker.health), so no broadcast is needed to count
them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from ragcore.redis_clients import redis_client
from ragcore.tasks.contracts import Queue

SENT_AT_HEADER = "sent_at"
#: kombu's Redis transport: separator and priority steps (0 is the bare queue name).
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)

_WORKER_KEY = "ragcore:worker:{hostname}"
_CONSUMERS_KEY = "ragcore:consumers:{queue}"
#: Each worker's last heartbeat per queue, kept until a live worker re-queues what it held
#: (ragcore.worker.recovery).
BEATS_KEY = "ragcore:beats:{queue}"
#: The tasks each worker of a queue holds (running or reserved ahead), by worker, as JSON lists.
_HELD_KEY = "ragcore:held:{queue}"
#: One element per task the workers of a queue hold: the list KEDA reads beside the waiting list.
IN_FLIGHT_KEY = "ragcore:inflight:{queue}"
REVOKED_KEY = "ragcore:revoked"


def broker_client(url: str) -> redis.Redis:
    """One client (and connection pool) per broker URL per process."""
    return redis_client(url)


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
    #: Workers whose heartbeat lapsed holding tasks not re-queued yet: (hostname, last heartbeat).
    lost: list[tuple[str, float]] = field(default_factory=list)
    #: Age of the stalest heartbeat among the consumers, None without consumers.
    stalest_heartbeat_age_seconds: float | None = None

    @property
    def unconsumed(self) -> bool:
        return not self.consumers


def queue_stats(
    client: redis.Redis, queue: str, heartbeat_ttl: float, now: float | None = None
) -> QueueStats:
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for name in list_names(queue):
        pipe.llen(name)
        pipe.lindex(name, -1)
    pipe.zrangebyscore(
        _CONSUMERS_KEY.format(queue=queue), now - heartbeat_ttl, "+inf", withscores=True
    )
    pipe.llen(IN_FLIGHT_KEY.format(queue=queue))
    pipe.zrangebyscore(BEATS_KEY.format(queue=queue), "-inf", now - heartbeat_ttl, withscores=True)
    pipe.hkeys(_HELD_KEY.format(queue=queue))
    *replies, consumers, held, lapsed, holders = pipe.execute()
    depth = sum(int(n) for n in replies[0::2])
    stamps = [t for t in (message_sent_at(raw) for raw in replies[1::2]) if t is not None]
    oldest = max(0.0, now - min(stamps)) if depth and stamps else None
    # A gone worker that held nothing leaves nothing to wait for: only the ones whose tasks wait
    # count.
    lost = [(host.decode(), float(at)) for host, at in lapsed if host in set(holders)]
    stalest = max(0.0, now - min(at for _, at in consumers)) if consumers else None
    return QueueStats(
        queue, depth, oldest, sorted(c.decode() for c, _ in consumers), int(held), lost, stalest
    )


def all_queue_stats(client: redis.Redis, heartbeat_ttl: float) -> list[QueueStats]:
    now = time.time()
    return [queue_stats(client, q.value, heartbeat_ttl, now) for q in Queue]


def heartbeat_ttl(interval_seconds: float) -> float:
    """How long a heartbeat counts: three missed beats (at least 15 s) and a worker is gone."""
    return max(3 * interval_seconds, 15.0)


def record_worker(
    client: redis.Redis,
    hostname: str,
    queues: Iterable[str],
    fields: Mapping[str, Any],
    ttl: float,
    now: float | None = None,
) -> None:
    """A worker's heartbeat: its record (with a TTL) and its place among each queue's consumers."""
    now = time.time() if now is None else now
    key = _WORKER_KEY.format(hostname=hostname)
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        key, mapping={**{k: json.dumps(v) for k, v in fields.items()}, "heartbeat": json.dumps(now)}
    )
    pipe.expire(key, int(ttl) + 1)
    for queue in queues:
        consumers = _CONSUMERS_KEY.format(queue=queue)
        pipe.zadd(consumers, {hostname: now})
        # forget workers that died without a goodbye
        pipe.zremrangebyscore(consumers, "-inf", now - ttl)
        pipe.zadd(BEATS_KEY.format(queue=queue), {hostname: now})
    pipe.execute()


def forget_worker(client: redis.Redis, hostname: str, queues: Iterable[str]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.delete(_WORKER_KEY.format(hostname=hostname))
    for queue in queues:
        pipe.zrem(_CONSUMERS_KEY.format(queue=queue), hostname)
        # a warm shutdown hands back what it held
        pipe.zrem(BEATS_KEY.format(queue=queue), hostname)
    pipe.execute()
    for queue in queues:
        note_in_flight(client, queue, hostname, [])


def worker_record(client: redis.Redis, hostname: str) -> dict[str, Any] | None:
    raw: dict[bytes, bytes] = client.hgetall(_WORKER_KEY.format(hostname=hostname))  # type: ignore[assignment]  # redis-py types both decode modes; ours gives bytes
    if not raw:
        return None
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def live_workers(client: redis.Redis, heartbeat_ttl: float) -> set[str]:
    """Hostnames of every worker whose heartbeat is current, on any queue."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for q in Queue:
        pipe.zrangebyscore(_CONSUMERS_KEY.format(queue=q.value), now - heartbeat_ttl, "+inf")
    return {h.decode() for hosts in pipe.execute() for h in hosts}


def lapsed_workers(client: redis.Redis, queue: str, older_than: float) -> list[tuple[str, float]]:
    """Workers of `queue` whose last heartbeat is before `older_than` and whose tasks nobody
    re-queued yet."""
    rows: list[tuple[bytes, float]] = client.zrangebyscore(
        BEATS_KEY.format(queue=queue), "-inf", older_than, withscores=True
    )  # type: ignore[assignment]  # redis-py types both decode modes; ours gives bytes
    return [(host.decode(), float(at)) for host, at in rows]


def last_heartbeat(client: redis.Redis, queue: str, hostname: str) -> float | None:
    score = client.zscore(BEATS_KEY.format(queue=queue), hostname)
    return float(score) if score is not None else None


# KEDA's redis scaler reads a list's length only, so the held tasks of all workers of a queue are
# kept as one list, rebuilt atomically whenever one worker's share changes.
_NOTE_IN_FLIGHT = """
if ARGV[2] == '[]' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
local held = redis.call('HVALS', KEYS[1])
for _, ids in ipairs(held) do redis.call('RPUSH', KEYS[2], unpack(cjson.decode(ids))) end
return redis.call('LLEN', KEYS[2])
"""


def note_in_flight(client: redis.Redis, queue: str, hostname: str, task_ids: list[str]) -> int:
    """Record the tasks `hostname` holds of `queue`; returns how many the queue's workers hold in
    all."""
    keys = [_HELD_KEY.format(queue=queue), IN_FLIGHT_KEY.format(queue=queue)]
    return int(client.eval(_NOTE_IN_FLIGHT, 2, *keys, hostname, json.dumps(sorted(task_ids))))


def in_flight(client: redis.Redis, queue: str) -> int:
    return int(client.llen(IN_FLIGHT_KEY.format(queue=queue)))


_STOPPING_KEY = "ragcore:stopping:{hostname}"


def note_stopping(client: redis.Redis, hostname: str, ttl: int) -> None:
    """Tell the tasks of a worker that it is shutting down (its pool processes hear no signal of
    it)."""
    client.set(_STOPPING_KEY.format(hostname=hostname), 1, ex=ttl)


def clear_stopping(client: redis.Redis, hostname: str) -> None:
    client.delete(_STOPPING_KEY.format(hostname=hostname))


def is_stopping(client: redis.Redis, hostname: str) -> bool:
    return bool(client.exists(_STOPPING_KEY.format(hostname=hostname)))


def publish_revocation(client: redis.Redis, task_id: str, now: float | None = None) -> None:
    """Tell running workers, through a feed they poll, that `task_id` is revoked (the ledger keeps
    it)."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.zadd(REVOKED_KEY, {task_id: now})
    # a starting worker reads the ledger
    pipe.zremrangebyscore(REVOKED_KEY, "-inf", now - 7 * 24 * 3600)
    pipe.execute()


def revocations_since(client: redis.Redis, since: float) -> tuple[list[str], float]:
    """Task ids revoked at or after `since`, and the time to ask from next."""
    rows: list[tuple[bytes, float]] = client.zrangebyscore(
        REVOKED_KEY, since, "+inf", withscores=True
    )  # type: ignore[assignment]  # redis-py types both decode modes; ours gives bytes
    ids = [member.decode() for member, _ in rows]
    latest = max((float(score) for _, score in rows), default=since)
    return ids, latest
