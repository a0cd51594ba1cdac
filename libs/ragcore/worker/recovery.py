"""Re-queue, at once, the tasks a worker was running or holding when it died, whatever its name.

With the Redis broker, a late-acknowledged message whose worker was killed stays in the transport's
`unacked` hash until the visibility timeout (longer than the longest task: hours) has passed. A
worker
that starts under the same node name knows better: every task the ledger says it had STARTED and
never finished died with its previous life, and so did the messages its previous life last noted as
reserved (the worker's monitor notes them in Redis twice a second while they change). It puts those
messages back on their queue when it is ready, so a crashed full sync resumes on restart instead of
hours later, and the deliveries a notifications worker had reserved go out at once.

A worker replaced under another name (a pod replacement, a node loss) never comes back: instead
every live worker of its queue looks, at each heartbeat, for lost workers of that queue: their
heartbeat stopped (`worker_lost_after_seconds`). One Lua script claims a lost worker atomically,
only while its heartbeat is still older than the cut-off, so however many live workers notice
together, one re-queues its tasks, once, and never those of a worker that beats again.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from celery import signals
from sqlalchemy import select

from ragcore.broker import heartbeats, in_flight
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks.states import TaskState

log = logging.getLogger(__name__)


def started_task_ids(hostname: str) -> set[str]:
    """What the ledger says `hostname` had STARTED and never finished."""
    with session_scope() as session:
        return set(
            session.scalars(
                select(TaskRecord.task_id).where(
                    TaskRecord.worker == hostname, TaskRecord.state == TaskState.STARTED
                )
            )
        )


def _reserved_key(hostname: str) -> str:
    return f"ragcore:reserved:{hostname}"


def note_reserved(client: Any, hostname: str, task_ids: list[str], ttl: int) -> None:
    """What this worker holds now (running or reserved ahead), for its next life to re-queue."""
    if task_ids:
        client.set(_reserved_key(hostname), orjson.dumps(task_ids), ex=ttl)
    else:
        client.delete(_reserved_key(hostname))


def reserved_by(client: Any, hostname: str) -> set[str]:
    raw = client.get(_reserved_key(hostname))
    return set(orjson.loads(raw)) if raw else set()


def restore(channel: Any, task_ids: set[str]) -> list[str]:
    """Move the unacked messages of `task_ids` back to their queues; returns the ids restored."""
    qos = channel.qos
    restored: list[str] = []
    for tag, raw in channel.client.hscan_iter(qos.unacked_key):
        message = orjson.loads(raw)[0]
        task_id = message.get("headers", {}).get("id")
        if task_id in task_ids:
            qos.restore_by_tag(
                tag.decode() if isinstance(tag, bytes) else tag, client=channel.client
            )
            restored.append(task_id)
    return restored


# KEYS: the queue's heartbeats, the lost worker's reserved note. ARGV: its hostname, the cut-off.
# Removing the heartbeat entry is the claim; the reserved note goes with it, read and deleted.
_CLAIM = """
local beat = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not beat or tonumber(beat) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
local reserved = redis.call('GET', KEYS[2]) or '[]'
redis.call('DEL', KEYS[2])
return reserved
"""


def claim_lost(client: Any, queue: str, hostname: str, cutoff: float) -> set[str] | None:
    """The task ids `hostname` held if this caller is the one to re-queue them; None if it is
    not."""
    reserved = client.eval(
        _CLAIM,
        2,
        heartbeats.BEATS_KEY.format(queue=queue),
        _reserved_key(hostname),
        hostname,
        cutoff,
    )
    return None if reserved is None else set(orjson.loads(reserved))


def requeue_lost(
    app: Any, client: Any, queue: str, lost_after: float, now: float
) -> dict[str, list[str]]:
    """Re-queue what the lost workers of `queue` held; returns the ids restored per worker
    claimed."""
    restored: dict[str, list[str]] = {}
    for hostname, last in heartbeats.lost_workers(client, queue, now - lost_after):
        held = claim_lost(client, queue, hostname, now - lost_after)
        if held is None:
            continue  # another live worker claimed it first, or it beats again
        held |= started_task_ids(hostname)
        with app.connection_for_write() as conn:
            restored[hostname] = restore(conn.default_channel, held) if held else []
        in_flight.note_in_flight(client, queue, hostname, [])
        log.warning(
            "worker %s lost (last heartbeat %.0fs ago): re-queued %d task(s): %s",
            hostname,
            now - last,
            len(restored[hostname]),
            restored[hostname],
        )
    return restored


def connect() -> None:
    @signals.worker_ready.connect(weak=False, dispatch_uid="recovery.worker_ready")
    def _recover(sender: Any, **_: Any) -> None:
        try:
            with sender.app.connection_for_write() as conn:
                left = started_task_ids(sender.hostname) | reserved_by(
                    conn.default_channel.client, sender.hostname
                )
                if not left:
                    return
                restored = restore(conn.default_channel, left)
            log.warning(
                "re-queued %d task(s) left by this worker's previous run: %s",
                len(restored),
                restored,
            )
        except Exception:  # recovery is best effort: the visibility timeout still redelivers later
            log.exception("recovery of the previous run's tasks failed")
