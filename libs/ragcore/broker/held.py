"""Which tasks the broker holds, told per task id without reading the queues.

A queue of a million messages cannot be searched each minute (kombu's Redis lists hold JSON, the id
inside). So every publisher of this code base adds the task id to a sorted set of its queue before
the message is pushed (`mark_published`, score: the publish time), and the worker that receives it
removes it (`mark_received`): the set is what waits in the queue, and asking it for a batch of ids
is one ZMSCORE, whatever the depth. A received task is then in the transport's `unacked` hash (kombu
appends it there before Celery sees it) and in its worker's reserved note (ragcore.worker.recovery),
until it is acknowledged. The set lives in the broker's Redis: a Redis that loses its data loses the
set with the messages, so the two stay in agreement; the id is added before the push, so a replica
that has the message has its id too.

A message can also return to its queue without a publish: a warm shutdown or a lapsed worker's
claim hands reserved messages back. Both mark their ids published again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis
from kombu.transport.redis import Channel

from ragcore.broker import depths
from ragcore.broker.client import broker_client
from ragcore.settings import get_settings

log = logging.getLogger(__name__)

PUBLISHED_KEY = "ragcore:published:{queue}"
_RESERVED_KEY = "ragcore:reserved:{hostname}"


def mark_published(
    client: redis.Redis, queue: str, task_ids: Iterable[str], now: float | None = None
) -> None:
    now = time.time() if now is None else now
    mapping = {task_id: now for task_id in task_ids}
    if mapping:
        client.zadd(PUBLISHED_KEY.format(queue=queue), mapping)


def mark_received(client: redis.Redis, queue: str, task_ids: Iterable[str]) -> None:
    ids = list(task_ids)
    if ids:
        client.zrem(PUBLISHED_KEY.format(queue=queue), *ids)


def waiting(client: redis.Redis, queue: str, task_ids: list[str]) -> set[str]:
    """The ids among `task_ids` that wait in `queue` (published, not received yet)."""
    if not task_ids:
        return set()
    scores = client.zmscore(PUBLISHED_KEY.format(queue=queue), task_ids)
    return {task_id for task_id, score in zip(task_ids, scores, strict=True) if score is not None}


def forget_drained(client: redis.Redis, queue: str, older_than: float) -> int:
    """While `queue` is empty, no id published before `older_than` still waits in it: drop them.

    Such an entry outlived its message (a publish that failed after the id was added, a receipt
    whose removal died with its worker); left alone it would hide a task the broker lost.
    """
    pipe = client.pipeline(transaction=False)
    for name in depths.list_names(queue):
        pipe.llen(name)
    if any(int(n) for n in pipe.execute()):
        return 0
    return int(client.zremrangebyscore(PUBLISHED_KEY.format(queue=queue), "-inf", older_than))


def unacked(client: redis.Redis) -> set[str]:
    """Ids of the messages delivered to a worker and not acknowledged yet (running, reserved ahead,
    waiting on a countdown), the transport's `unacked` hash: as large as what the workers hold, not
    as the queues."""
    held: set[str] = set()
    for _, raw in client.hscan_iter(Channel.unacked_key, count=1000):
        try:
            task_id = orjson.loads(raw)[0]["headers"]["id"]
        except (orjson.JSONDecodeError, LookupError, TypeError):
            continue  # not a Celery message: nothing of the ledger's
        if isinstance(task_id, str):
            held.add(task_id)
    return held


def reserved_note_key(hostname: str) -> str:
    return _RESERVED_KEY.format(hostname=hostname)


def held_by(client: redis.Redis, hostnames: Iterable[str]) -> set[str]:
    """The ids the workers `hostnames` noted they hold (running, reserved or scheduled)."""
    hosts = sorted(hostnames)
    if not hosts:
        return set()
    notes: list[bytes | None] = client.mget([reserved_note_key(h) for h in hosts])  # type: ignore[assignment]  # bytes: no decode_responses
    return {task_id for raw in notes if raw for task_id in orjson.loads(raw)}


def note_publish(headers: dict[str, Any], routing_key: str | None) -> None:
    """Called just before a message is pushed (the ledger's `before_task_publish` receiver, which
    every publisher of this code base connects). A Redis that fails here fails the publish too."""
    task_id = headers.get("id")
    if not task_id or not routing_key:
        return
    try:
        mark_published(broker_client(get_settings().redis), routing_key, [task_id])
    except redis.RedisError as exc:
        log.warning("could not mark task %s published: %s", task_id, exc)
