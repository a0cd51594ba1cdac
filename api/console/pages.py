"""The console's pages (GET): each a URL to bookmark and share. They read through the functions
the JSON API calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from api.console import deadletters, deliveries_view, overview
from api.console.render import error, page
from api.console.session import ConsoleSession
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.routers import tasks as tasks_api
from ragcore.broker import queue_stats
from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts, ledger, rerun
from ragcore.tasks import status as task_view

router = APIRouter(prefix="/console", include_in_schema=False)

STATES = ("PENDING", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED")
_RUNNING = ("PENDING", "STARTED", "PROGRESS", "RETRY")
PAGE_SIZE = 50


@router.get("", response_class=HTMLResponse)
def overview_page(
    request: Request, session: ConsoleSession, settings: SettingsDep, db: SessionDep
) -> HTMLResponse:
    return page(request, "overview.html", session, view=overview.read(settings, db))


def _moment(value: str | None, field: str) -> datetime | None:
    """A time from a filter: ISO 8601, or a browser's datetime-local (read as UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{field}: {value!r} is not a time (2026-01-31T09:30, UTC)") from None


@router.get("/tasks", response_class=HTMLResponse)
def tasks_page(
    request: Request,
    session: ConsoleSession,
    db: SessionDep,
    name: Annotated[str, Query(max_length=128)] = "",
    state: Annotated[str, Query(max_length=16)] = "",
    queue: Annotated[str, Query(max_length=32)] = "",
    worker: Annotated[str, Query(max_length=256)] = "",
    task_id: Annotated[str, Query(alias="id", max_length=64)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    cursor: Annotated[str, Query(max_length=90)] = "",
) -> Response:
    filters = {
        "name": name, "state": state, "queue": queue, "worker": worker, "id": task_id,
        "since": since, "until": until,
    }
    choices = {
        "names": sorted(contracts.BY_NAME),
        "states": STATES,
        "queues": [q.value for q in contracts.Queue],
    }
    try:
        if name and name not in contracts.BY_NAME:
            raise ValueError(f"name: no task is named {name!r}")
        if state and state not in STATES:
            raise ValueError(f"state: {state!r} is not one of {', '.join(STATES)}")
        if queue and queue not in choices["queues"]:
            raise ValueError(f"queue: no queue is named {queue!r}")
        if task_id and ledger.get(db, task_id) is not None:
            return RedirectResponse(f"/console/tasks/{task_id}", status_code=303)
        rows, next_cursor = ledger.history(
            db,
            name=name or None,
            state=state or None,
            queue=queue or None,
            worker=worker or None,
            id_prefix=task_id or None,
            since=_moment(since, "since"),
            until=_moment(until, "until"),
            limit=PAGE_SIZE,
            cursor=cursor or None,
        )
    except ValueError as exc:
        return page(
            request, "tasks.html", session, 422, error=str(exc), rows=[], filters=filters,
            next_cursor=None, **choices,
        )
    items = [(r, task_view.ledger_state(r)) for r in rows]
    return page(
        request, "tasks.html", session, rows=items, filters=filters, next_cursor=next_cursor,
        **choices,
    )


def _task(request: Request, celery: CeleryDep, db: SessionDep, settings: SettingsDep, task_id: str):  # type: ignore[no-untyped-def]
    """The task's status as GET /api/v1/tasks/status answers it, and its ledger row."""
    try:
        view = tasks_api.task_status(task_id, "admin", celery, db, settings)
    except HTTPException:
        return None, None
    return view, ledger.get(db, task_id)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(
    request: Request,
    task_id: str,
    session: ConsoleSession,
    celery: CeleryDep,
    db: SessionDep,
    settings: SettingsDep,
) -> Response:
    view, record = _task(request, celery, db, settings, task_id)
    if view is None:
        return error(request, session, 404, f"no task with id {task_id!r} was ever sent")
    return page(
        request,
        "task.html",
        session,
        task=view,
        kwargs=record.kwargs if record else {},
        running=view.status in _RUNNING,
        can_run_again=record is not None
        and record.state in rerun.FINISHED
        and record.name in contracts.BY_NAME,
        first_run=rerun.first_run(task_id),
        runs_again=[t for t in rerun.runs_again(db, task_id) if t != task_id],
    )


@router.get("/tasks/{task_id}/progress", response_class=HTMLResponse)
def task_progress(
    request: Request,
    task_id: str,
    session: ConsoleSession,
    celery: CeleryDep,
    db: SessionDep,
    settings: SettingsDep,
) -> Response:
    """The progress bar alone, for the page's script to swap in while the task runs."""
    view, _ = _task(request, celery, db, settings, task_id)
    if view is None:
        return error(request, session, 404, f"no task with id {task_id!r} was ever sent")
    return page(request, "progress.html", session, task=view, running=view.status in _RUNNING)


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries_page(
    request: Request, session: ConsoleSession, db: SessionDep, filters: deliveries_view.FilterDep
) -> Response:
    form = {k: v for k, v in request.query_params.items() if k in deliveries_view.FIELDS and v}
    if isinstance(filters, str):
        return page(
            request, "deliveries.html", session, 422, error=filters, rows=[], total=0, form=form,
            names=deliveries_view.NAMES,
        )
    rows, total = deliveries_view.matching(db, filters, limit=100)
    return page(
        request, "deliveries.html", session, rows=rows, total=total, form=form,
        names=deliveries_view.NAMES,
    )


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(request: Request, session: ConsoleSession) -> HTMLResponse:
    return page(request, "dead_letters.html", session, available=deadletters.available())


@router.get("/workers", response_class=HTMLResponse)
def workers_page(
    request: Request, session: ConsoleSession, settings: SettingsDep, db: SessionDep
) -> HTMLResponse:
    """Every worker with a current heartbeat, from the broker; what it runs, from the ledger."""
    client = queue_stats.broker_client(settings.broker)
    hosts = sorted(
        queue_stats.live_workers(client, queue_stats.heartbeat_ttl(settings.worker_heartbeat_seconds))
    )
    running = db.execute(
        select(TaskRecord.worker, TaskRecord.task_id, TaskRecord.name)
        .where(TaskRecord.state == "STARTED", TaskRecord.worker.in_(hosts))
        .order_by(TaskRecord.sent_at.desc())
    ).all()
    now = datetime.now(UTC).timestamp()
    workers = []
    for host in hosts:
        record = queue_stats.worker_record(client, host) or {}
        workers.append(
            {
                "name": host,
                "queue": record.get("queue"),
                "concurrency": record.get("concurrency"),
                "pool": record.get("pool"),
                "active": record.get("active"),
                "heartbeat_age": now - float(record["heartbeat"]) if record.get("heartbeat") else None,
                "last_dequeue_age": now - float(record["last_dequeue"])
                if record.get("last_dequeue")
                else None,
                "running": [(t, n) for w, t, n in running if w == host],
            }
        )
    lost = {
        s.name: [(host, datetime.fromtimestamp(at, UTC)) for host, at in s.lost]
        for s in queue_stats.all_queue_stats(
            client, queue_stats.heartbeat_ttl(settings.worker_heartbeat_seconds)
        )
        if s.lost
    }
    return page(request, "workers.html", session, workers=workers, lost=lost)

