"""The task ledger: a durable record of every task sent through the contracts, kept current by the
workers' signals, so status outlives Redis results and unknown ids are told apart from pending ones.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from sqlalchemy import update
from sqlalchemy.orm import Session

from ragcore import contracts
from ragcore.contracts import TaskContract
from ragcore.db import session_scope, utcnow
from ragcore.db.models import TaskRecord

log = logging.getLogger(__name__)


def record_sent(session: Session, task_id: str, contract: TaskContract, kwargs: dict[str, Any]) -> None:
    session.merge(TaskRecord(task_id=task_id, name=contract.name, queue=contract.queue.value, state="PENDING", kwargs=kwargs))


def get(session: Session, task_id: str) -> TaskRecord | None:
    return session.get(TaskRecord, task_id)


def _update(task_id: str | None, **values: Any) -> None:
    if not task_id:
        return
    try:
        with session_scope() as session:
            session.execute(update(TaskRecord).where(TaskRecord.task_id == task_id).values(**values))
    except Exception:  # the ledger must never fail a task; the result backend still has the outcome
        log.exception("task ledger update failed", extra={"ledger_task_id": task_id})


def set_progress(task_id: str, progress: dict[str, Any]) -> None:
    _update(task_id, progress=progress)


def connect_worker_signals() -> None:
    """Keep the ledger current from a worker's task signals."""

    @signals.task_prerun.connect(weak=False, dispatch_uid="ledger.task_prerun")
    def _started(task_id: str, task: Any, **_: Any) -> None:
        _update(task_id, state="STARTED", started_at=utcnow(), worker=task.request.hostname)

    @signals.task_retry.connect(weak=False, dispatch_uid="ledger.task_retry")
    def _retried(request: Any, reason: Any, **_: Any) -> None:
        _update(request.id, state="RETRY", retries=request.retries + 1, error=str(reason))

    @signals.task_success.connect(weak=False, dispatch_uid="ledger.task_success")
    def _succeeded(sender: Any, result: Any, **_: Any) -> None:
        stored = result if isinstance(result, dict) else {"value": result}
        _update(sender.request.id, state="SUCCESS", finished_at=utcnow(), result=stored, error=None)

    @signals.task_failure.connect(weak=False, dispatch_uid="ledger.task_failure")
    def _failed(task_id: str, exception: BaseException, einfo: Any, **_: Any) -> None:
        _update(task_id, state="FAILURE", finished_at=utcnow(), error=f"{type(exception).__name__}: {exception}",
                traceback=str(einfo))

    @signals.task_revoked.connect(weak=False, dispatch_uid="ledger.task_revoked")
    def _revoked(request: Any, **_: Any) -> None:
        _update(request.id, state="REVOKED", finished_at=utcnow(), revoked=True)


def connect_publisher_signals() -> None:
    """Record in the ledger every contract task this process publishes (Beat sends without `dispatch`)."""

    @signals.before_task_publish.connect(weak=False, dispatch_uid="ledger.before_task_publish")
    def _sent(headers: dict[str, Any], body: Any, **_: Any) -> None:
        task = contracts.BY_NAME.get(headers.get("task", ""))
        if task is None:
            return
        kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else {}
        try:
            with session_scope() as session:
                record_sent(session, headers["id"], task, kwargs)
        except Exception:
            log.exception("task ledger insert failed", extra={"ledger_task_id": headers.get("id")})
