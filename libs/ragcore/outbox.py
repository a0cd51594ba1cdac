"""The transactional outbox: tasks recorded with the change that calls for them, published after.

A query's reports must not be lost when the broker is down at that moment, and must not slow the
answer: the API writes them in the query's transaction and a relay publishes them (at once, and
again later for whatever the broker refused).
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from ragcore import ledger
from ragcore.contracts import TaskContract, contract
from ragcore.db import session_scope, utcnow
from ragcore.db.models import OutboxEntry

log = logging.getLogger(__name__)


def add(session: Session, task: TaskContract, kwargs: dict[str, Any]) -> str:
    """Record `task` to be sent once `session` commits; returns its task id."""
    payload = task.validate(kwargs)
    task_id = str(uuid.uuid4())
    session.add(OutboxEntry(task_id=task_id, task_name=task.name, kwargs=payload))
    ledger.record_sent(session, task_id, task, payload)
    return task_id


def publish_pending(app: Celery, limit: int = 500) -> int:
    """Publish unpublished entries, oldest first; returns how many were published.

    Rows are claimed with SKIP LOCKED (PostgreSQL) so two relays never publish the same entry; a
    duplicate publish after a crash is harmless because every consumer is idempotent by task id.
    """
    published = 0
    with session_scope() as session:
        entries = session.scalars(
            select(OutboxEntry)
            .where(OutboxEntry.published_at.is_(None))
            .order_by(OutboxEntry.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for entry in entries:
            task = contract(entry.task_name)
            try:
                app.send_task(task.name, kwargs=entry.kwargs, queue=task.queue.value, task_id=entry.task_id)
            except Exception as exc:  # broker down: keep the rest for the next round
                entry.attempts += 1
                entry.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("outbox publish failed, will retry: %s", exc)
                break
            entry.published_at = utcnow()
            published += 1
    return published


class Relay:
    """Publishes the outbox from a background thread: when woken, and every `interval` seconds."""

    def __init__(self, app: Celery, interval: float = 2.0) -> None:
        self._app = app
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                while publish_pending(self._app) and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("outbox relay round failed")
