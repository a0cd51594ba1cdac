"""Celery's signals keep the ledger current: the publish-time stamp on every message, each task's
start, retry, end and revocation in a worker, and every contract task a publisher sends."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals
from celery.worker import state as worker_state

from ragcore.broker import depths, held
from ragcore.db import session_scope, utcnow
from ragcore.db.outage import DATABASE_ERRORS, Outage
from ragcore.tasks import contracts
from ragcore.tasks.ledger.records import (
    RECORDED_HEADER,
    UNRECORDED_HEADER,
    identity,
    record_received,
    record_sent,
)
from ragcore.tasks.ledger.writer import flush, update_task
from ragcore.tasks.states import TaskState

log = logging.getLogger(__name__)


@signals.before_task_publish.connect(weak=False, dispatch_uid="ledger.stamp_sent_at")
def _stamp_sent_at(
    headers: dict[str, Any] | None = None, routing_key: str | None = None, **_: Any
) -> None:
    # Every publisher of contract tasks imports the ledger (dispatch, reports, Beat, workers): the
    # publish time in the message is what the oldest-waiting-task age of a queue is measured from,
    # and the id joins its queue's waiting set (what the reconciler asks instead of the queue).
    if headers is not None:
        depths.stamp_sent_at(headers)
        held.note_publish(headers, routing_key)


#: When each task running in this process started (perf_counter): its run time is written with
#: its end, in the same update (prerun, success and failure signals run in the same process).
_starts: dict[str, float] = {}


def _run_seconds(task_id: str) -> dict[str, float]:
    start = _starts.pop(task_id, None)
    return {} if start is None else {"run_seconds": time.perf_counter() - start}


def _started(task_id: str, **_: Any) -> None:
    # The row becomes STARTED in the task itself, decided against a revocation
    # (`ledger.claim_start`, called by `define_task`): one write, not two.
    _starts[task_id] = time.perf_counter()


def _retried(sender: Any, request: Any, reason: Any, **_: Any) -> None:
    _starts.pop(request.id, None)  # the next run starts afresh
    update_task(
        sender, request.id, state=TaskState.RETRY, retries=request.retries + 1, error=str(reason)
    )


def _succeeded(sender: Any, result: Any, **_: Any) -> None:
    stored = result if isinstance(result, dict) else {"value": result}
    task_id = sender.request.id
    update_task(
        sender,
        task_id,
        state=TaskState.SUCCESS,
        finished_at=utcnow(),
        result=stored,
        error=None,
        **_run_seconds(task_id),
    )


def _failed(sender: Any, task_id: str, exception: BaseException, einfo: Any, **_: Any) -> None:
    update_task(
        sender,
        task_id,
        state=TaskState.FAILURE,
        finished_at=utcnow(),
        error=f"{type(exception).__name__}: {exception}",
        traceback=str(einfo),
        **_run_seconds(task_id),
    )


def _received(request: Any, **_: Any) -> None:
    record_received(request)


#: Why a task Celery calls revoked nobody revoked (see `_revoked`).
INTERRUPTED = (
    "interrupted before it ran: its worker lost the broker connection and Celery cancelled it; "
    "the reconciler publishes it again"
)


def _revoked(sender: Any, request: Any, terminated: bool = False, **_: Any) -> None:
    if terminated and request.id not in worker_state.revoked:
        # Nobody revoked it: on a lost broker connection (`worker_cancel_long_running_tasks_on_
        # connection_loss`) Celery terminates the requests its pool accepted, and one that had not
        # started yet is announced revoked and its message acknowledged (celery.worker.request
        # on_failure). It never ran: left waiting, the reconciler publishes it again.
        update_task(sender, request.id, state=TaskState.RETRY, error=INTERRUPTED)
        return
    # Celery discards a revoked task before `task_received`: an id revoked unseen learns its name
    # here.
    update_task(
        sender,
        request.id,
        state=TaskState.REVOKED,
        finished_at=utcnow(),
        revoked=True,
        **identity(sender.name, getattr(request, "delivery_info", None)),
    )


def _flush(**_: Any) -> None:
    flush()


_WORKER_RECEIVERS = (
    (signals.task_prerun, _started),
    (signals.task_retry, _retried),
    (signals.task_success, _succeeded),
    (signals.task_failure, _failed),
    (signals.task_received, _received),
    (signals.task_revoked, _revoked),
    (signals.worker_process_shutdown, _flush),
    (signals.worker_shutdown, _flush),
)


def connect_worker_signals() -> None:
    """Keep the ledger current from a worker's task signals."""
    for signal, receiver in _WORKER_RECEIVERS:
        signal.connect(receiver, weak=False, dispatch_uid=f"ledger.{signal.name}")


def _sent(headers: dict[str, Any], body: Any, **_: Any) -> None:
    task = contracts.BY_NAME.get(headers.get("task", ""))
    if task is None or headers.get(RECORDED_HEADER):
        return
    kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 else {}
    try:
        with session_scope() as session:
            record_sent(session, headers["id"], task, kwargs)
    except DATABASE_ERRORS as exc:
        # Sent all the same: the worker that receives it records it.
        headers[UNRECORDED_HEADER] = True
        _publisher_outage.failed(exc)
        return
    except Exception:
        log.exception("task ledger insert failed", extra={"ledger_task_id": headers.get("id")})
        return
    _publisher_outage.over()


_publisher_outage = Outage("task ledger (publishing)")


def connect_publisher_signals() -> None:
    """Record in the ledger every contract task this process publishes (Beat sends without
    `dispatch`)."""
    signals.before_task_publish.connect(
        _sent, weak=False, dispatch_uid="ledger.before_task_publish"
    )
