"""The workers page's rows: each live worker's heartbeat record from the broker, and what it runs
now from the ledger (its STARTED tasks, read from the (state, sent_at) index)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragcore.broker import broker_client, depths, heartbeats
from ragcore.db.models import TaskRecord
from ragcore.settings import Settings
from ragcore.tasks.states import TaskState


@dataclass(frozen=True)
class WorkerRow:
    name: str
    queue: str | None
    concurrency: int | None
    pool: str | None
    #: Tasks it runs now, by its last heartbeat.
    active: int | None
    heartbeat_age: float | None
    last_dequeue_age: float | None
    #: (task id, name) of what the ledger says it runs.
    running: list[tuple[str, str | None]] = field(default_factory=list)


def _age(record: dict[str, object], key: str, now: float) -> float | None:
    value = record.get(key)
    return now - float(value) if isinstance(value, int | float) else None


def live(settings: Settings, session: Session) -> list[WorkerRow]:
    client = broker_client(settings.redis)
    ttl = heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
    hosts = sorted(heartbeats.live_workers(client, ttl))
    running = session.execute(
        select(TaskRecord.worker, TaskRecord.task_id, TaskRecord.name)
        .where(TaskRecord.state == TaskState.STARTED, TaskRecord.worker.in_(hosts))
        .order_by(TaskRecord.sent_at.desc())
    ).all()
    now = time.time()
    rows = []
    for host in hosts:
        record = heartbeats.worker_record(client, host) or {}
        rows.append(
            WorkerRow(
                name=host,
                queue=record.get("queue"),
                concurrency=record.get("concurrency"),
                pool=str(record["pool"]).rsplit(".", 1)[-1] if record.get("pool") else None,
                active=record.get("active"),
                heartbeat_age=_age(record, "heartbeat", now),
                last_dequeue_age=_age(record, "last_dequeue", now),
                running=[(t, n) for w, t, n in running if w == host],
            )
        )
    return rows


def lost(settings: Settings) -> dict[str, list[tuple[str, datetime]]]:
    """Per queue, the workers whose heartbeat lapsed holding tasks not re-queued yet, and since
    when."""
    client = broker_client(settings.redis)
    stats = depths.all_queue_stats(
        client, heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
    )
    return {
        s.name: [(host, datetime.fromtimestamp(at, UTC)) for host, at in s.lost]
        for s in stats
        if s.lost
    }
