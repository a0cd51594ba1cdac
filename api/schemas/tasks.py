"""What the task routes take and answer (SPEC §3); the names are the OpenAPI schema names."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, model_validator

from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts
from ragcore.tasks.status import ledger_view

TaskId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
]
# The functional form builds one member per contract (mypy cannot follow a computed member list).
TaskName = Enum(  # type: ignore[misc]
    "TaskName", {name: name for name in contracts.BY_NAME}, type=str
)


class HistoryItem(BaseModel):
    task_id: str
    #: Null for an id revoked before any worker received it.
    name: str | None
    queue: str | None
    status: str
    sent_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    retries: int
    revoked: bool
    progress: dict[str, Any] | None
    error: str | None

    @model_validator(mode="before")
    @classmethod
    def _from_record(cls, data: Any) -> Any:
        # `model_validate(record)`: a ledger row, its state as the status routes name it
        return ledger_view(data, cls.model_fields) if isinstance(data, TaskRecord) else data


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    #: Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: str | None


class TaskSummary(BaseModel):  # type: ignore[no-redef]  # pydantic plugin: field `kwargs` vs **kwargs
    task_id: str
    name: str | None = None
    worker: str
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    #: When it started (active tasks), epoch seconds.
    time_start: float | None = None
    #: When it is due (scheduled tasks, e.g. a retry's countdown).
    eta: str | None = None
    #: The pool process running it (active tasks on a prefork pool).
    worker_pid: int | None = None


class TaskList(BaseModel):
    active: list[TaskSummary]
    scheduled: list[TaskSummary]
    reserved: list[TaskSummary]
    #: The workers that answered within the timeout.
    workers: list[str]
    timeout_seconds: float


class WorkerInfo(BaseModel):
    name: str
    stats: dict[str, Any]
    queues: list[str]
    registered_tasks: list[str]


class WorkersResponse(BaseModel):
    status: Literal["success"] = "success"
    workers: list[WorkerInfo]
    total_workers: int


class LostWorker(BaseModel):
    name: str
    last_heartbeat: datetime


class QueueInfo(BaseModel):
    name: str
    depth: int
    #: Age of the oldest waiting task; null when the queue is empty.
    oldest_task_age_seconds: float | None
    consumers: int
    workers: list[str]
    #: Tasks its workers hold (running or reserved ahead): what KEDA counts beside `depth`.
    in_flight: int = 0
    #: Lost workers (heartbeat stopped) whose tasks wait to be re-queued by a live worker.
    lost_workers: list[LostWorker] = []
    #: True when no worker consumes this queue (its tasks wait until one starts) or a worker is
    #: lost.
    flagged: bool
    warning: str | None = None


class QueuesResponse(BaseModel):
    queues: list[QueueInfo]


class RevokeResult(BaseModel):
    task_id: str
    revoked: bool
    #: Whether a running task was told to stop (terminate=true on a task that was running).
    terminated: bool
    status: str
    detail: str


class TriggeredTask(BaseModel):
    task_id: str
    name: str
