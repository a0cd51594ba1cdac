"""Workers' heartbeats: each worker's record, its place among each queue's consumers, and its last
beat per queue, by which a worker whose heartbeat stopped is known as lost.

Every beat is stamped, and every lapse judged, on the Redis server's clock (`TIME`), never a
worker's own: a worker whose clock lags a peer's by a minute would otherwise look lost at every
beat, and one whose clock runs ahead would see every peer lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from ragcore.broker.in_flight import note_in_flight
from ragcore.tasks.contracts import Queue

WORKER_KEY = "ragcore:worker:{hostname}"
CONSUMERS_KEY = "ragcore:consumers:{queue}"
#: Each worker's last heartbeat per queue, kept until a live worker re-queues what it held
#: (ragcore.worker.recovery).
BEATS_KEY = "ragcore:beats:{queue}"


def heartbeat_ttl(interval_seconds: float) -> float:
    """How long a heartbeat counts: three missed beats (at least 15 s) and a worker is gone."""
    return max(3 * interval_seconds, 15.0)


def server_time(client: redis.Redis) -> float:
    """The Redis server's clock, in seconds: the one clock every heartbeat is stamped and judged
    on."""
    seconds, microseconds = client.time()
    return float(seconds) + float(microseconds) / 1_000_000


def record_worker(
    client: redis.Redis,
    hostname: str,
    queues: Iterable[str],
    fields: Mapping[str, Any],
    ttl: float,
    now: float | None = None,
) -> None:
    """A worker's heartbeat: its record (with a TTL) and its place among each queue's consumers."""
    now = server_time(client) if now is None else now
    key = WORKER_KEY.format(hostname=hostname)
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        key, mapping={**{k: json.dumps(v) for k, v in fields.items()}, "heartbeat": json.dumps(now)}
    )
    pipe.expire(key, int(ttl) + 1)
    for queue in queues:
        consumers = CONSUMERS_KEY.format(queue=queue)
        pipe.zadd(consumers, {hostname: now})
        # forget workers that died without a goodbye
        pipe.zremrangebyscore(consumers, "-inf", now - ttl)
        pipe.zadd(BEATS_KEY.format(queue=queue), {hostname: now})
    pipe.execute()


def forget_worker(client: redis.Redis, hostname: str, queues: Iterable[str]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.delete(WORKER_KEY.format(hostname=hostname))
    for queue in queues:
        pipe.zrem(CONSUMERS_KEY.format(queue=queue), hostname)
        # a warm shutdown hands back what it held
        pipe.zrem(BEATS_KEY.format(queue=queue), hostname)
    pipe.execute()
    for queue in queues:
        note_in_flight(client, queue, hostname, [])


def worker_record(client: redis.Redis, hostname: str) -> dict[str, Any] | None:
    raw: dict[bytes, bytes] = client.hgetall(WORKER_KEY.format(hostname=hostname))  # type: ignore[assignment]  # redis-py types both decode modes; ours gives bytes
    if not raw:
        return None
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def live_workers(client: redis.Redis, heartbeat_ttl: float) -> set[str]:
    """Hostnames of every worker whose heartbeat is current, on any queue."""
    now = server_time(client)
    pipe = client.pipeline(transaction=False)
    for q in Queue:
        pipe.zrangebyscore(CONSUMERS_KEY.format(queue=q.value), now - heartbeat_ttl, "+inf")
    return {h.decode() for hosts in pipe.execute() for h in hosts}


def beating_since(client: redis.Redis, since: float) -> set[str]:
    """Hostnames of every worker that beat at or after `since` on any queue: with `since` the
    lost-worker cut-off, every worker not lost (live, or lapsing and not lost yet)."""
    pipe = client.pipeline(transaction=False)
    for q in Queue:
        pipe.zrangebyscore(BEATS_KEY.format(queue=q.value), since, "+inf")
    return {h.decode() for hosts in pipe.execute() for h in hosts}


def lost_workers(client: redis.Redis, queue: str, older_than: float) -> list[tuple[str, float]]:
    """Lost workers of `queue`: last heartbeat before `older_than`, and tasks nobody re-queued
    yet."""
    rows: list[tuple[bytes, float]] = client.zrangebyscore(
        BEATS_KEY.format(queue=queue), "-inf", older_than, withscores=True
    )  # type: ignore[assignment]  # redis-py types both decode modes; ours gives bytes
    return [(host.decode(), float(at)) for host, at in rows]


def last_heartbeat(client: redis.Redis, queue: str, hostname: str) -> float | None:
    score = client.zscore(BEATS_KEY.format(queue=queue), hostname)
    return float(score) if score is not None else None
