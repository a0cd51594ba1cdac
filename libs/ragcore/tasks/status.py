"""One task's status: the live state from the result backend, completed by the durable ledger.

Redis results expire (or a flush loses them); the ledger keeps what the workers wrote, so the merge
answers for a task long after its result is gone.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, model_validator

from ragcore.db.models import TaskRecord
from ragcore.tasks.states import FINISHED, TaskState

log = logging.getLogger(__name__)


class LiveResult(Protocol):
    """What is read of Celery's `AsyncResult` (a protocol, so unit tests need no backend)."""

    @property
    def state(self) -> str: ...
    @property
    def info(self) -> Any: ...
    @property
    def result(self) -> Any: ...
    @property
    def traceback(self) -> str | None: ...


class TaskStatus(BaseModel):
    """A task as `GET /api/v1/tasks/status/{id}` answers it (its OpenAPI schema)."""

    task_id: str
    status: str
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    name: str | None = None
    queue: str | None = None
    progress: dict[str, Any] | None = None
    sent_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    retries: int = 0
    revoked: bool = False
    #: The worker running it stopped heartbeating: a live worker of its queue re-queues it
    #: (`worker_lost_after_seconds` after `worker_lost_since`), and its progress is not moving
    #: meanwhile.
    worker_lost: bool = False
    worker_lost_since: datetime | None = None
    #: The broker had lost it: the reconciler published it again from the ledger, or ended it
    #: (`reconcile_reason`: lost, worker_gone, finished, contract_gone, invalid_arguments, revoked);
    #: or kept it unacknowledged for a worker gone: moved back to its queue (orphaned_unacked).
    reconciled: bool = False
    reconciled_at: datetime | None = None
    reconcile_reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_record(cls, data: Any) -> Any:
        # `model_validate(record)`: the columns shown whatever the live state (result and error
        # only once it expired: `merge`).
        if isinstance(data, TaskRecord):
            view = ledger_view(data, _LEDGER_COLUMNS)
            return {**view, "reconciled": data.reconciled_at is not None}
        return data


#: The ledger's columns a task's status shows whatever its live state.
_LEDGER_COLUMNS = (
    "task_id",
    "name",
    "queue",
    "progress",
    "sent_at",
    "started_at",
    "finished_at",
    "worker",
    "retries",
    "revoked",
    "reconciled_at",
    "reconcile_reason",
)


def ledger_view(record: TaskRecord, columns: Iterable[str]) -> dict[str, Any]:
    """`columns` of a ledger row and its `status` as `ledger_state` names it: what a view of the
    task validates from."""
    return {
        **{name: getattr(record, name) for name in columns if name != "status"},
        "status": ledger_state(record),
    }


#: The form of an error's first word that names its exception class (`"OperationalError: ..."`).
_EXCEPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*(?=:|$)")


def error_summary(error: str, request_id: str | None) -> str:
    """What a non-admin caller reads of a task's error: the exception's name, never its text (a
    database host, a neighbour's answer), and the request id an operator looks it up under."""
    name = _EXCEPTION_NAME.match(error)
    what = f"the task failed ({name.group(0)})" if name else "the task failed"
    return f"{what}; an admin key reads the details (request id {request_id})"


def live_state(live: LiveResult) -> str | None:
    """The result backend's state, or None while it is unreachable (the ledger answers then)."""
    try:
        return live.state
    except Exception as exc:  # whatever the backend's client raises: Redis down or timing out
        log.warning("result backend unreachable, answering from the ledger: %s", exc)
        return None


def ledger_state(record: TaskRecord) -> str:
    """The ledger's state, as Celery names it: a started task that reported progress is PROGRESS."""
    if record.state == TaskState.STARTED and record.progress:
        return TaskState.PROGRESS
    return record.state


def ledger_result(record: TaskRecord) -> Any:
    # Non-dict results are stored as {"value": ...} (see the ledger's success signal).
    if record.result is not None and set(record.result) == {"value"}:
        return record.result["value"]
    return record.result


def merge(
    task_id: str,
    state: str | None,
    live: LiveResult,
    record: TaskRecord | None,
    lost_since: datetime | None = None,
) -> TaskStatus | None:
    """The task's status; None for an id that was never sent (no ledger row, nothing live).

        `state` is `live_state(live)`, read before `record` was: the ledger then holds at least what
        the worker wrote before it. `lost_since`: when the worker running it last beat, if it is
    lost (its heartbeat stopped).
    """
    if record is None and state in (None, TaskState.PENDING):
        return None
    view = TaskStatus(task_id=task_id, status=state or TaskState.PENDING)
    if record is not None:
        view = TaskStatus.model_validate(record)
        view.status = state or TaskState.PENDING
        view.worker_lost, view.worker_lost_since = lost_since is not None, lost_since
        if view.status == TaskState.PENDING and record.state != TaskState.PENDING:
            # The Redis result expired or was flushed (or was never written): the ledger knows.
            view.status = ledger_state(record)
            view.result = ledger_result(record)
            view.error = record.error
            view.traceback = record.traceback
    if state is not None:
        _complete_from_live(view, state, live)
    return view


def _complete_from_live(view: TaskStatus, state: str, live: LiveResult) -> None:
    if state in FINISHED and view.finished_at is None:
        # Ended in Redis a moment before the ledger's write (the worker stores the result first):
        # the end's time as the backend stamped it.
        view.finished_at = _as_datetime(getattr(live, "date_done", None))
    if state == TaskState.PROGRESS and isinstance(live.info, dict):
        view.progress = live.info
    elif state == TaskState.SUCCESS:
        view.result = live.result
    elif state in (TaskState.FAILURE, TaskState.RETRY, TaskState.REVOKED):
        error = live.result
        view.error = (
            f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        )
        view.traceback = live.traceback
    if view.name is None:
        view.name, view.queue = getattr(live, "name", None), getattr(live, "queue", None)


def _as_datetime(value: Any) -> datetime | None:
    """Celery's `date_done`: a datetime, or its ISO text with an extended result."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
