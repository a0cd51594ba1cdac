"""The console's pages (GET): each a URL to bookmark and share. They read through the functions
the JSON API calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from api.console import deadletters, deliveries_view, overview, workers_view
from api.console.render import error, page
from api.console.session import ConsoleSession, Operator
from api.deps import CeleryDep, SessionDep, SettingsDep
from api.routers import tasks
from ragcore.db.models import TaskRecord
from ragcore.settings import Settings
from ragcore.tasks import contracts, ledger, rerun
from ragcore.tasks.states import FINISHED, TaskState
from ragcore.tasks.status import TaskStatus, ledger_state

router = APIRouter(prefix="/console", include_in_schema=False)

STATES = tuple(s.value for s in TaskState)
_RUNNING = tuple(s.value for s in TaskState if s not in FINISHED)
PAGE_SIZE = 50
NAMES = sorted(contracts.BY_NAME)
QUEUES = [q.value for q in contracts.Queue]


@router.get("", response_class=HTMLResponse)
def overview_page(
    request: Request, operator: ConsoleSession, settings: SettingsDep, db: SessionDep
) -> HTMLResponse:
    return page(request, "overview.html", operator, view=overview.read(settings, db))


def _picture(svg: str, refresh_seconds: float) -> Response:
    # Drawn from Beat's snapshot, refreshed this often: the browser need not ask sooner.
    cache = f"private, max-age={refresh_seconds:g}"
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": cache})


@router.get("/charts/queues.svg")
def queues_picture(_: ConsoleSession, settings: SettingsDep, db: SessionDep) -> Response:
    return _picture(overview.queues_picture(settings, db), settings.api.metrics_snapshot_seconds)


@router.get("/charts/durations.svg")
def durations_picture(_: ConsoleSession, settings: SettingsDep, db: SessionDep) -> Response:
    return _picture(overview.durations_picture(settings, db), settings.api.metrics_snapshot_seconds)


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
    operator: ConsoleSession,
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
        "name": name,
        "state": state,
        "queue": queue,
        "worker": worker,
        "id": task_id,
        "since": since,
        "until": until,
    }
    try:
        if name and name not in contracts.BY_NAME:
            raise ValueError(f"name: no task is named {name!r}")
        if state and state not in STATES:
            raise ValueError(f"state: {state!r} is not one of {', '.join(STATES)}")
        if queue and queue not in QUEUES:
            raise ValueError(f"queue: no queue is named {queue!r}")
        if task_id and ledger.get(db, task_id) is not None:
            return RedirectResponse(f"/console/tasks/{task_id}", status_code=303)
        rows, next_cursor = ledger.history(
            db,
            name=name or None,
            state=TaskState(state) if state else None,
            queue=queue or None,
            worker=worker or None,
            id_prefix=task_id or None,
            since=_moment(since, "since"),
            until=_moment(until, "until"),
            limit=PAGE_SIZE,
            cursor=cursor or None,
        )
    except ValueError as exc:
        return _tasks(request, operator, 422, error=str(exc), rows=[], filters=filters)
    items = [(r, ledger_state(r)) for r in rows]
    return _tasks(request, operator, rows=items, filters=filters, next_cursor=next_cursor)


def _tasks(request: Request, operator: Operator, status_code: int = 200, **values: Any) -> Response:
    return page(
        request,
        "tasks.html",
        operator,
        status_code,
        names=NAMES,
        states=STATES,
        queues=QUEUES,
        **values,
    )


def _task(
    celery: Celery, db: Session, settings: Settings, task_id: str
) -> tuple[TaskStatus | None, TaskRecord | None]:
    """The task's status as GET /api/v1/tasks/status answers it, and its ledger row."""
    try:
        view = tasks.task_status(task_id, "admin", celery, db, settings)
    except HTTPException:
        return None, None
    return view, ledger.get(db, task_id)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(
    request: Request,
    task_id: str,
    operator: ConsoleSession,
    celery: CeleryDep,
    db: SessionDep,
    settings: SettingsDep,
) -> Response:
    view, record = _task(celery, db, settings, task_id)
    if view is None:
        return error(request, operator, 404, f"no task with id {task_id!r} was ever sent")
    return page(
        request,
        "task.html",
        operator,
        task=view,
        kwargs=record.kwargs if record else {},
        running=view.status in _RUNNING,
        can_run_again=record is not None
        and record.state in FINISHED
        and record.name in contracts.BY_NAME,
        first_run=rerun.first_run(task_id),
        runs_again=[t for t in rerun.runs_again(db, task_id) if t != task_id],
    )


@router.get("/tasks/{task_id}/progress", response_class=HTMLResponse)
def task_progress(
    request: Request,
    task_id: str,
    operator: ConsoleSession,
    celery: CeleryDep,
    db: SessionDep,
    settings: SettingsDep,
) -> Response:
    """The progress bar alone, for the page's script to swap in while the task runs."""
    view, _ = _task(celery, db, settings, task_id)
    if view is None:
        return error(request, operator, 404, f"no task with id {task_id!r} was ever sent")
    return page(request, "progress.html", operator, task=view, running=view.status in _RUNNING)


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries_page(
    request: Request, operator: ConsoleSession, db: SessionDep, filters: deliveries_view.FilterDep
) -> Response:
    form = {k: v for k, v in request.query_params.items() if k in deliveries_view.FIELDS and v}
    if isinstance(filters, str):
        return page(
            request,
            "deliveries.html",
            operator,
            422,
            error=filters,
            rows=[],
            total=0,
            form=form,
            names=deliveries_view.NAMES,
        )
    rows, total = deliveries_view.matching(db, filters, limit=100)
    return page(
        request,
        "deliveries.html",
        operator,
        rows=rows,
        total=total,
        form=form,
        names=deliveries_view.NAMES,
    )


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters_page(
    request: Request,
    operator: ConsoleSession,
    db: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> HTMLResponse:
    rows, next_cursor = deadletters.page(db, before)
    return page(request, "dead_letters.html", operator, rows=rows, next_cursor=next_cursor)


@router.get("/workers", response_class=HTMLResponse)
def workers_page(
    request: Request, operator: ConsoleSession, settings: SettingsDep, db: SessionDep
) -> HTMLResponse:
    """Every worker with a current heartbeat, from the broker; what it runs, from the ledger."""
    return page(
        request,
        "workers.html",
        operator,
        workers=workers_view.live(settings, db),
        lost=workers_view.lost(settings),
    )
