"""Task management (SPEC §3): status, history, workers, queues, revocation and the manual triggers.

Status and history answer from the durable task ledger as well as Redis, so they outlive Redis
results; list and workers ask the workers themselves with a bounded wait; queues read the broker.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from celery import Celery
from celery.result import AsyncResult
from fastapi import APIRouter, HTTPException, Query, Response, status

from api.auth import AdminKey, SyncKey
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.errors import BROKER_DOWN, ERROR_RESPONSES, ErrorBody, Responses
from api.schemas.tasks import (
    HistoryItem,
    HistoryPage,
    LostWorker,
    QueueInfo,
    QueuesResponse,
    RevokeResult,
    TaskId,
    TaskList,
    TaskName,
    TaskSummary,
    TriggeredTask,
    WorkerInfo,
    WorkersResponse,
)
from ragcore.broker import broker_client, depths, heartbeats, workers
from ragcore.logs import request_id_var
from ragcore.tasks import contracts, dispatch, ledger, revoking
from ragcore.tasks.arguments import Timestamp
from ragcore.tasks.contracts import TaskContract
from ragcore.tasks.states import TaskState
from ragcore.tasks.status import TaskStatus, error_summary, live_state, merge

log = logging.getLogger(__name__)

_NOT_FOUND: Responses = {
    404: {"model": ErrorBody, "description": "No task with this id was ever sent"}
}

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], responses=ERROR_RESPONSES)


# -- status -------------------------------------------------------------------------------------


@router.get("/status/{task_id}", responses=_NOT_FOUND)
def task_status(
    task_id: TaskId, scope: SyncKey, celery: CeleryDep, session: SessionDep, settings: SettingsDep
) -> TaskStatus:
    """Live state from the result backend, completed by the ledger; 404 for ids never sent.
    A sync key (Ingest) reads the sync tasks only; admin reads every task."""
    live = AsyncResult(task_id, app=celery)
    state = live_state(live)
    # Read after the live state: the ledger then holds at least what the worker wrote before it.
    record = ledger.get(session, task_id)
    client = broker_client(settings.redis)
    lost_since = workers.lost_since(client, record) if record is not None else None
    view = merge(task_id, state, live, record, lost_since)
    if view is None:
        raise HTTPException(404, f"no task with id {task_id!r} was ever sent")
    if scope == "sync" and view.queue != contracts.Queue.SYNC.value:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "this key's scope 'sync' reads the status of sync tasks only",
        )
    if scope != "admin":  # internals are for operators only
        view.traceback = None
        if view.error is not None:
            log.info("task %s error, summarised for a %s key: %s", task_id, scope, view.error)
            view.error = error_summary(view.error, request_id_var.get())
    return view


# -- history ------------------------------------------------------------------------------------


@router.get("/history")
def task_history(
    _: AdminKey,
    session: SessionDep,
    name: Annotated[TaskName | None, Query(description="Only tasks of this name")] = None,
    state: Annotated[
        TaskState | None, Query(alias="status", description="Only tasks in this state")
    ] = None,
    since: Annotated[
        Timestamp | None, Query(description="Only tasks sent at or after this time")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=ledger.CURSOR_PATTERN, description="next_cursor of the previous page"),
    ] = None,
) -> HistoryPage:
    """The ledger, newest first, a page at a time."""
    if since is not None:
        try:
            since = since.astimezone(UTC)
        except OverflowError:
            raise HTTPException(422, "invalid request: since: out of range") from None
    try:
        rows, next_cursor = ledger.history(
            session,
            name=name.value if name else None,
            state=state,
            since=since,
            limit=limit,
            cursor=cursor,
        )
    except ValueError as exc:
        raise HTTPException(422, f"invalid request: cursor: {exc}") from None
    items = [HistoryItem.model_validate(r) for r in rows]
    return HistoryPage(items=items, next_cursor=next_cursor)


# -- what the workers hold ----------------------------------------------------------------------


def _summary(worker: str, info: dict[str, Any], eta: str | None = None) -> TaskSummary:
    args, kwargs, pid = info.get("args"), info.get("kwargs"), info.get("worker_pid")
    return TaskSummary(
        task_id=str(info.get("id")),
        name=info.get("name"),
        worker=worker,
        args=list(args) if isinstance(args, list | tuple) else None,
        kwargs=kwargs if isinstance(kwargs, dict) else None,
        time_start=info.get("time_start"),
        eta=eta,
        worker_pid=pid if isinstance(pid, int) else None,
    )


@router.get("/list", responses=BROKER_DOWN)
def list_tasks(_: AdminKey, celery: CeleryDep, settings: SettingsDep) -> TaskList:
    """Running, scheduled (eta) and reserved (prefetched) tasks, as the workers report them."""
    active, scheduled, reserved = workers.ask(celery, settings, "active", "scheduled", "reserved")
    return TaskList(
        active=[_summary(w, t) for w, tasks in active.items() for t in tasks],
        scheduled=[
            _summary(w, t.get("request", {}), eta=t.get("eta"))
            for w, tasks in scheduled.items()
            for t in tasks
        ],
        reserved=[_summary(w, t) for w, tasks in reserved.items() for t in tasks],
        workers=sorted({*active, *scheduled, *reserved}),
        timeout_seconds=settings.workers.inspect_timeout_seconds,
    )


@router.get("/workers", responses=BROKER_DOWN)
def list_workers(_: AdminKey, celery: CeleryDep, settings: SettingsDep) -> WorkersResponse:
    """Every worker that answers within the timeout: its statistics, queues and tasks."""
    stats, active_queues, registered = workers.ask(
        celery, settings, "stats", "active_queues", "registered"
    )
    found = [
        WorkerInfo(
            name=name,
            stats=stats.get(name, {}),
            queues=sorted(q["name"] for q in active_queues.get(name, [])),
            registered_tasks=sorted(registered.get(name, [])),
        )
        for name in sorted({*stats, *active_queues, *registered})
    ]
    return WorkersResponse(workers=found, total_workers=len(found))


# -- queues -------------------------------------------------------------------------------------


@router.get("/queues", responses=BROKER_DOWN)
def list_queues(_: AdminKey, settings: SettingsDep) -> QueuesResponse:
    """Depth, oldest waiting task and consumers of each of the four queues, from the broker."""
    stats = depths.all_queue_stats(
        broker_client(settings.redis),
        heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds),
    )
    return QueuesResponse(queues=[_queue_info(s) for s in stats])


def _queue_info(stats: depths.QueueStats) -> QueueInfo:
    lost = [
        LostWorker(name=host, last_heartbeat=datetime.fromtimestamp(at, UTC))
        for host, at in stats.lost
    ]
    return QueueInfo(
        name=stats.name,
        depth=stats.depth,
        oldest_task_age_seconds=stats.oldest_age_seconds,
        consumers=len(stats.consumers),
        workers=stats.consumers,
        in_flight=stats.in_flight,
        lost_workers=lost,
        flagged=stats.unconsumed or bool(stats.lost),
        warning=_queue_warning(stats),
    )


def _queue_warning(stats: depths.QueueStats) -> str | None:
    problems = ["no worker consumes this queue"] if stats.unconsumed else []
    if stats.lost:
        problems.append(
            f"worker(s) {', '.join(h for h, _ in stats.lost)} stopped heartbeating; "
            "a live worker of this queue re-queues their tasks"
        )
    return "; ".join(problems) or None


# -- revoke -------------------------------------------------------------------------------------


@router.post(
    "/revoke/{task_id}",
    responses={
        **BROKER_DOWN,
        202: {
            "model": RevokeResult,
            "description": "No worker has received this id yet: revoked before it arrives",
        },
        409: {
            "model": ErrorBody,
            "description": "Already finished, or its worker's pool cannot terminate it",
        },
    },
)
def revoke_task(
    task_id: TaskId,
    _: AdminKey,
    celery: CeleryDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    terminate: Annotated[bool, Query(description="Also stop the task if it is running")] = False,
) -> RevokeResult:
    """Revoke a task for good, as Celery does any id, sent or not: recorded in the ledger, so a
    worker started later skips it too."""
    try:
        revocation = revoking.revoke(
            session, celery, broker_client(settings.redis), task_id, terminate
        )
    except (revoking.AlreadyFinished, revoking.CannotTerminate) as exc:
        raise HTTPException(409, str(exc)) from None
    if not revocation.seen:
        response.status_code = status.HTTP_202_ACCEPTED
    return RevokeResult.model_validate(revocation, from_attributes=True)


# -- manual triggers ----------------------------------------------------------------------------


def _trigger(celery: Celery, contract: TaskContract) -> TriggeredTask:
    return TriggeredTask(task_id=dispatch.send(celery, contract), name=contract.name)


@router.post("/trigger/cleanup-cache", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN)
def trigger_cleanup_cache(_: AdminKey, celery: CeleryDep) -> TriggeredTask:
    """Purge stale query-cache entries from Redis now."""
    return _trigger(celery, contracts.CLEANUP_OLD_CACHE)


@router.post(
    "/trigger/reset-daily-limits", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN
)
def trigger_reset_daily_limits(_: AdminKey, celery: CeleryDep) -> TriggeredTask:
    """Reset every user's daily quota now."""
    return _trigger(celery, contracts.RESET_ALL_DAILY_LIMITS)


@router.post(
    "/trigger/send-statistics", status_code=status.HTTP_202_ACCEPTED, responses=BROKER_DOWN
)
def trigger_send_statistics(_: AdminKey, celery: CeleryDep) -> TriggeredTask:
    """Report usage statistics to the Users system now."""
    return _trigger(celery, contracts.SEND_USAGE_STATISTICS)
