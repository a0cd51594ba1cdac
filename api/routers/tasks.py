"""Task management (SPEC §3): status, history, workers, queues, revocation and the manual triggers.

Status and history answer from the durable task ledger as well as Redis, so they outlive Redis
results; list and workers ask the workers themselves with a bounded wait; queues read the broker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

import redis
from celery import Celery
from celery.result import AsyncResult
from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Response, status
from kombu.exceptions import OperationalError
from pydantic import BaseModel

from api.auth import AdminKey, SyncKey
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.errors import BROKER_DOWN, BROKER_UNREACHABLE, ERROR_RESPONSES, ErrorBody, Responses
from ragcore import invariants
from ragcore.tasks import contracts
from ragcore.tasks import dispatch
from ragcore.tasks import ledger
from ragcore.broker import queue_stats as queues
from ragcore.tasks.contracts import TaskContract, Timestamp
from ragcore.db.models import TaskRecord
from ragcore.settings import Settings

log = logging.getLogger(__name__)


_NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No task with this id was ever sent"}}


@asynccontextmanager
async def _refuse_unsafe_start(app: FastAPI) -> AsyncIterator[None]:
    # The API's start-up invariants; FastAPI merges an included router's lifespan into the app's.
    settings: Settings = app.state.settings
    try:
        invariants.check(settings, queues.broker_client(settings.broker), service="api", api=True)
    except invariants.InvariantError as exc:
        log.critical("%s", exc)
        raise
    yield


router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES, lifespan=_refuse_unsafe_start)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]
TaskName = Enum("TaskName", {name: name for name in contracts.BY_NAME}, type=str)  # type: ignore[misc]
TaskState = Literal["PENDING", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]


@contextmanager
def _broker() -> Iterator[None]:
    """Broker outages become a 503 with a message, not an internal error."""
    try:
        yield
    except (redis.RedisError, OperationalError, ConnectionError, TimeoutError) as exc:
        log.warning("broker unreachable: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, BROKER_UNREACHABLE) from None


# -- status -------------------------------------------------------------------------------------

class TaskStatus(BaseModel):
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
    #: (`worker_lost_after_seconds` after `worker_lost_since`), and its progress is not moving meanwhile.
    worker_lost: bool = False
    worker_lost_since: datetime | None = None


def _lost_since(settings: Settings, record: TaskRecord) -> datetime | None:
    """When the worker running `record` last beat, if its heartbeat lapsed; None while it beats."""
    if record.state != "STARTED" or not record.worker:
        return None
    try:
        client = queues.broker_client(settings.broker)
        if queues.worker_record(client, record.worker) is not None:
            return None
        last = queues.last_heartbeat(client, record.queue, record.worker)
    except redis.RedisError:
        return None  # the broker is down: nothing to say about the worker
    # No heartbeat left: already re-queued (it waits for a worker) or a warm shutdown handed it back.
    return datetime.fromtimestamp(last, timezone.utc) if last is not None else record.started_at


def _ledger_result(record: TaskRecord) -> Any:
    # Non-dict results are stored as {"value": ...} (see ledger's success signal).
    if record.result is not None and set(record.result) == {"value"}:
        return record.result["value"]
    return record.result


def _ledger_state(record: TaskRecord) -> str:
    return "PROGRESS" if record.state == "STARTED" and record.progress else record.state


@router.get("/status/{task_id}", responses=_NOT_FOUND)
def task_status(task_id: TaskId, scope: SyncKey, celery: CeleryDep, session: SessionDep, settings: SettingsDep) -> TaskStatus:
    """Live state from the result backend, completed by the ledger; 404 for ids never sent.
    A sync key (Ingest) reads the sync tasks only; admin reads every task."""
    live: AsyncResult | None = AsyncResult(task_id, app=celery)
    try:
        state = live.state  # type: ignore[union-attr]
    except Exception as exc:  # Redis down: the ledger still answers
        log.warning("result backend unreachable, answering from the ledger: %s", exc)
        live, state = None, "PENDING"
    # Read after the live state: the ledger then holds at least what the worker wrote before it.
    record = ledger.get(session, task_id)
    if record is None and state == "PENDING":
        raise HTTPException(404, f"no task with id {task_id!r} was ever sent")
    answer = TaskStatus(task_id=task_id, status=state)
    if record is not None:
        answer = TaskStatus(
            task_id=task_id, status=state, name=record.name, queue=record.queue, progress=record.progress,
            sent_at=record.sent_at, started_at=record.started_at, finished_at=record.finished_at,
            worker=record.worker, retries=record.retries, revoked=record.revoked,
        )
        lost_since = _lost_since(settings, record)
        answer.worker_lost, answer.worker_lost_since = lost_since is not None, lost_since
        if state == "PENDING" and record.state != "PENDING":
            # The Redis result expired or was flushed (or was never written): the ledger knows.
            answer.status = _ledger_state(record)
            answer.result = _ledger_result(record)
            answer.error = record.error
            answer.traceback = record.traceback
    if live is not None:
        if state == "PROGRESS" and isinstance(live.info, dict):
            answer.progress = live.info
        elif state == "SUCCESS":
            answer.result = live.result
        elif state in ("FAILURE", "RETRY", "REVOKED"):
            error = live.result
            answer.error = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
            answer.traceback = live.traceback
        if answer.name is None:
            answer.name, answer.queue = getattr(live, "name", None), getattr(live, "queue", None)
    if scope == "sync" and answer.queue != contracts.Queue.SYNC.value:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this key's scope 'sync' reads the status of sync tasks only")
    if scope != "admin":
        answer.traceback = None  # internals are for operators only
    return answer


# -- history ------------------------------------------------------------------------------------

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


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    #: Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: str | None


@router.get("/history")
def task_history(
    _: AdminKey,
    session: SessionDep,
    name: Annotated[TaskName | None, Query(description="Only tasks of this name")] = None,
    state: Annotated[TaskState | None, Query(alias="status", description="Only tasks in this state")] = None,
    since: Annotated[Timestamp | None, Query(description="Only tasks sent at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=ledger.CURSOR_PATTERN, description="next_cursor of the previous page")] = None,
) -> HistoryPage:
    """The ledger, newest first, a page at a time."""
    if since is not None:
        try:
            since = since.astimezone(timezone.utc)
        except OverflowError:
            raise HTTPException(422, "invalid request: since: out of range") from None
    try:
        rows, next_cursor = ledger.history(session, name=name.value if name else None, state=state, since=since,
                                           limit=limit, cursor=cursor)
    except ValueError as exc:
        raise HTTPException(422, f"invalid request: cursor: {exc}") from None
    items = [
        HistoryItem(task_id=r.task_id, name=r.name, queue=r.queue, status=_ledger_state(r), sent_at=r.sent_at,
                    started_at=r.started_at, finished_at=r.finished_at, worker=r.worker, retries=r.retries,
                    revoked=r.revoked, progress=r.progress, error=r.error)
        for r in rows
    ]
    return HistoryPage(items=items, next_cursor=next_cursor)


# -- what the workers hold ----------------------------------------------------------------------

def _inspect(celery: Celery, settings: Settings, *methods: str) -> list[dict[str, Any]]:
    """Ask every worker, all `methods` at once; stop waiting once each worker with a current
    heartbeat answered, or after the timeout. One dict (worker -> reply) per method."""
    try:
        expected = len(queues.live_workers(queues.broker_client(settings.broker),
                                           queues.heartbeat_ttl(settings.worker_heartbeat_seconds)))
    except redis.RedisError:
        expected = 0
    inspect = celery.control.inspect(timeout=settings.inspect_timeout_seconds, limit=expected or None)
    # In parallel: the wait for silent workers is paid once, not per method (kombu's reply queue is
    # per thread, so the answers do not mix).
    with ThreadPoolExecutor(max_workers=len(methods)) as pool:
        return [reply or {} for reply in pool.map(lambda method: getattr(inspect, method)(), methods)]


class TaskSummary(BaseModel):
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


def _summary(worker: str, info: dict[str, Any], eta: str | None = None) -> TaskSummary:
    args, kwargs = info.get("args"), info.get("kwargs")
    return TaskSummary(
        task_id=str(info.get("id")), name=info.get("name"), worker=worker,
        args=list(args) if isinstance(args, (list, tuple)) else None,
        kwargs=kwargs if isinstance(kwargs, dict) else None,
        time_start=info.get("time_start"), eta=eta,
        worker_pid=info.get("worker_pid") if isinstance(info.get("worker_pid"), int) else None,
    )


@router.get("/list", responses=BROKER_DOWN)
def list_tasks(_: AdminKey, celery: CeleryDep, settings: SettingsDep) -> TaskList:
    """Running, scheduled (eta) and reserved (prefetched) tasks, as the workers report them."""
    with _broker():
        active, scheduled, reserved = _inspect(celery, settings, "active", "scheduled", "reserved")
    return TaskList(
        active=[_summary(w, t) for w, tasks in active.items() for t in tasks],
        scheduled=[_summary(w, t.get("request", {}), eta=t.get("eta")) for w, tasks in scheduled.items() for t in tasks],
        reserved=[_summary(w, t) for w, tasks in reserved.items() for t in tasks],
        workers=sorted({*active, *scheduled, *reserved}),
        timeout_seconds=settings.inspect_timeout_seconds,
    )


class WorkerInfo(BaseModel):
    name: str
    stats: dict[str, Any]
    queues: list[str]
    registered_tasks: list[str]


class WorkersResponse(BaseModel):
    status: Literal["success"] = "success"
    workers: list[WorkerInfo]
    total_workers: int


@router.get("/workers", responses=BROKER_DOWN)
def list_workers(_: AdminKey, celery: CeleryDep, settings: SettingsDep) -> WorkersResponse:
    """Every worker that answers within the timeout: its statistics, queues and tasks."""
    with _broker():
        stats, active_queues, registered = _inspect(celery, settings, "stats", "active_queues", "registered")
    workers = [
        WorkerInfo(name=name, stats=stats.get(name, {}),
                   queues=sorted(q["name"] for q in active_queues.get(name, [])),
                   registered_tasks=sorted(registered.get(name, [])))
        for name in sorted({*stats, *active_queues, *registered})
    ]
    return WorkersResponse(workers=workers, total_workers=len(workers))


# -- queues -------------------------------------------------------------------------------------

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
    #: Workers whose heartbeat lapsed and whose tasks wait to be re-queued by a live worker.
    lost_workers: list[LostWorker] = []
    #: True when no worker consumes this queue (its tasks wait until one starts) or a worker is lost.
    flagged: bool
    warning: str | None = None


class QueuesResponse(BaseModel):
    queues: list[QueueInfo]


@router.get("/queues", responses=BROKER_DOWN)
def list_queues(_: AdminKey, settings: SettingsDep) -> QueuesResponse:
    """Depth, oldest waiting task and consumers of each of the four queues, from the broker."""
    with _broker():
        stats = queues.all_queue_stats(queues.broker_client(settings.broker),
                                       queues.heartbeat_ttl(settings.worker_heartbeat_seconds))
    return QueuesResponse(queues=[
        QueueInfo(name=s.name, depth=s.depth, oldest_task_age_seconds=s.oldest_age_seconds,
                  consumers=len(s.consumers), workers=s.consumers, in_flight=s.in_flight,
                  lost_workers=[LostWorker(name=h, last_heartbeat=datetime.fromtimestamp(t, timezone.utc)) for h, t in s.lost],
                  flagged=s.unconsumed or bool(s.lost), warning=_queue_warning(s))
        for s in stats
    ])


def _queue_warning(stats: queues.QueueStats) -> str | None:
    problems = ["no worker consumes this queue"] if stats.unconsumed else []
    if stats.lost:
        problems.append(f"worker(s) {', '.join(h for h, _ in stats.lost)} stopped heartbeating; "
                        "a live worker of this queue re-queues their tasks")
    return "; ".join(problems) or None


# -- revoke -------------------------------------------------------------------------------------

class RevokeResult(BaseModel):
    task_id: str
    revoked: bool
    #: Whether a running task was told to stop (terminate=true on a task that was running).
    terminated: bool
    status: str
    detail: str


_NOT_SEEN = ("not seen yet: no worker has received a task with this id; revoked, so whichever worker "
             "receives it discards it, now or after a restart")


@router.post("/revoke/{task_id}", responses={
    **BROKER_DOWN,
    202: {"model": RevokeResult, "description": "No worker has received this id yet: revoked before it arrives"},
    409: {"model": ErrorBody, "description": "Already finished, or its worker's pool cannot terminate it"},
})
def revoke_task(
    task_id: TaskId, _: AdminKey, celery: CeleryDep, session: SessionDep, settings: SettingsDep, response: Response,
    terminate: Annotated[bool, Query(description="Also stop the task if it is running")] = False,
) -> RevokeResult:
    """Revoke a task for good, as Celery does any id, sent or not: recorded in the ledger, so a worker
    started later skips it too."""
    record = ledger.get(session, task_id)
    if record is None or record.name is None:  # no worker has received it (another client may send it later)
        with _broker():
            ledger.record_revoked_unseen(session, task_id)
            session.commit()  # durable before any worker hears of it
            queues.publish_revocation(queues.broker_client(settings.broker), task_id)
            # Nothing runs it (a worker that receives a task records it), so there is nothing to terminate.
            celery.control.revoke(task_id)
        response.status_code = status.HTTP_202_ACCEPTED
        return RevokeResult(task_id=task_id, revoked=True, terminated=False, status="REVOKED", detail=_NOT_SEEN)
    if record.state in ("SUCCESS", "FAILURE"):
        raise HTTPException(409, f"task {task_id} already finished ({record.state}); there is nothing to revoke")
    with _broker():
        client = queues.broker_client(settings.broker)
        try:
            live_state = AsyncResult(task_id, app=celery).state
        except Exception:
            live_state = record.state
        running = record.state == "STARTED" or live_state in ("STARTED", "PROGRESS")
        if terminate and running and record.worker:
            worker = queues.worker_record(client, record.worker)
            if worker is not None and not worker.get("can_terminate", True):
                raise HTTPException(409, (
                    f"task {task_id} runs on {record.worker}, whose pool ({worker.get('pool')}) cannot terminate a "
                    "running task; revoke without terminate to keep it from running again, or restart that worker"
                ))
        ledger.mark_revoked(record)
        session.commit()  # durable before any worker hears of it
        queues.publish_revocation(client, task_id)
        celery.control.revoke(task_id, terminate=terminate and running, signal="SIGTERM")
    if terminate and running:
        detail = "revoked; the running task is being terminated"
    elif running:
        detail = "revoked; the running task finishes, but will never run again"
    else:
        detail = "revoked; it will not run"
    return RevokeResult(task_id=task_id, revoked=True, terminated=terminate and running,
                        status=_ledger_state(record), detail=detail)


# -- manual triggers ----------------------------------------------------------------------------

class TriggeredTask(BaseModel):
    task_id: str
    name: str


def _trigger(celery: Celery, contract: TaskContract) -> TriggeredTask:
    with _broker():
        return TriggeredTask(task_id=dispatch.send(celery, contract), name=contract.name)


@router.post("/trigger/cleanup-cache", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN)
def trigger_cleanup_cache(_: AdminKey, celery: CeleryDep) -> TriggeredTask:
    """Purge stale query-cache entries from Redis now."""
    return _trigger(celery, contracts.CLEANUP_OLD_CACHE)


@router.post("/trigger/reset-daily-limits", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN)
def trigger_reset_daily_limits(_: AdminKey, celery: CeleryDep) -> TriggeredTask:
    """Reset every user's daily quota now."""
    return _trigger(celery, contracts.RESET_ALL_DAILY_LIMITS)


@router.post("/trigger/send-statistics", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN)
def trigger_send_statistics(_: AdminKey, celery: CeleryDep) -> TriggeredTask:
    """Report usage statistics to the Users system now."""
    return _trigger(celery, contracts.SEND_USAGE_STATISTICS)
