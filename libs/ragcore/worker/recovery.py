"""Re-queue, at once, the tasks a worker was running or holding when it died.

With the Redis broker, a late-acknowledged message whose worker was killed stays in the transport's
`unacked` hash until the visibility timeout (longer than the longest task: hours) has passed. A worker
that starts under the same node name knows better: every task the ledger says it had STARTED and
never finished died with its previous life, and so did the messages its previous life last noted as
reserved (the worker's monitor notes them in Redis twice a second while they change). It puts those
messages back on their queue when it is ready, so a crashed full sync resumes on restart instead of
hours later, and the deliveries a notifications worker had reserved go out at once.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from celery import signals
from sqlalchemy import select

from ragcore.db import session_scope
from ragcore.db.models import TaskRecord

log = logging.getLogger(__name__)


def orphaned_task_ids(hostname: str) -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(TaskRecord.task_id).where(TaskRecord.worker == hostname, TaskRecord.state == "STARTED")))


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
            qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag, client=channel.client)
            restored.append(task_id)
    return restored


def connect() -> None:
    @signals.worker_ready.connect(weak=False, dispatch_uid="recovery.worker_ready")
    def _recover(sender: Any, **_: Any) -> None:
        try:
            with sender.app.connection_for_write() as conn:
                orphans = orphaned_task_ids(sender.hostname) | reserved_by(conn.default_channel.client, sender.hostname)
                if not orphans:
                    return
                restored = restore(conn.default_channel, orphans)
            log.warning("re-queued %d task(s) orphaned by this worker's previous run: %s", len(restored), restored)
        except Exception:  # recovery is best effort: the visibility timeout still redelivers later
            log.exception("orphaned task recovery failed")
