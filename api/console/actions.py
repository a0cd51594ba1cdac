"""The console's actions. Each is a GET that shows what will happen (and to how many) with a form,
and the form's POST, which carries the session's CSRF token and does it through the function the
JSON API calls."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.console import deadletters, deliveries_view, session
from api.console.render import Notice, error, page
from api.console.session import CheckedSession, ConsoleSession, KeyRefused
from api.deps import CeleryDep, SessionDep, SettingsDep, commit
from api.routers import deliveries
from ragcore.broker import broker_client
from ragcore.tasks import ledger, rerun, revoking

router = APIRouter(prefix="/console", include_in_schema=False)


def _see(url: str, notice: Notice | None = None, **extra: object) -> RedirectResponse:
    query = "&".join(
        [*([f"notice={notice.name}"] if notice else []), *(f"{k}={v}" for k, v in extra.items())]
    )
    return RedirectResponse(f"{url}?{query}" if query else url, status_code=303)


# -- sign-in and sign-out -----------------------------------------------------------------------


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request) -> Response:
    token = session.form_token(request)
    response = page(
        request, "sign_in.html", None, csrf=token, next=request.query_params.get("next", "")
    )
    session.keep_form_token(request, response, token)
    return response


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(
    request: Request,
    settings: SettingsDep,
    key: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next_page: Annotated[str, Form(alias="next", max_length=2048)] = "/console",
) -> Response:
    session.check_form_token(request, csrf)
    # Only a console page: never a redirect elsewhere ("//host" is another site).
    local = next_page.startswith("/console") and not next_page.startswith("//")
    response = _see(next_page if local else "/console")
    try:
        session.sign_in(request, response, settings, key)
    except KeyRefused as exc:
        return page(
            request,
            "sign_in.html",
            None,
            exc.status_code,
            csrf=csrf,
            error=str(exc),
            next=next_page,
        )
    return response


@router.post("/sign-out")
def sign_out(_: CheckedSession) -> Response:
    response = _see("/console/sign-in", Notice.SIGNED_OUT)
    session.sign_out(response)
    return response


# -- tasks --------------------------------------------------------------------------------------


@router.get("/tasks/{task_id}/revoke", response_class=HTMLResponse)
def confirm_revoke(
    request: Request,
    task_id: str,
    operator: ConsoleSession,
    db: SessionDep,
    terminate: bool = False,
) -> Response:
    record = ledger.get(db, task_id)
    what = "Terminate" if terminate else "Revoke"
    known = f"{record.name} ({record.state})" if record else "an id no worker has received yet"
    return page(
        request,
        "confirm.html",
        operator,
        title=f"{what} task {task_id}?",
        detail=(
            f"{known}: "
            + (
                "revoked, and stopped if it is running."
                if terminate
                else "it will not run; if it is running, it finishes but never runs again."
            )
        ),
        action=f"/console/tasks/{task_id}/revoke",
        fields={"terminate": "true" if terminate else "false"},
        button=what,
        back=f"/console/tasks/{task_id}",
    )


@router.post("/tasks/{task_id}/revoke")
def revoke(
    request: Request,
    task_id: str,
    operator: CheckedSession,
    celery: CeleryDep,
    db: SessionDep,
    settings: SettingsDep,
    terminate: Annotated[bool, Form()] = False,
) -> Response:
    try:
        revocation = revoking.revoke(db, celery, broker_client(settings.redis), task_id, terminate)
    except (revoking.AlreadyFinished, revoking.CannotTerminate) as exc:
        return error(request, operator, 409, str(exc))
    notice = Notice.TERMINATED if revocation.terminated else Notice.REVOKED
    return _see(f"/console/tasks/{task_id}", notice)


@router.get("/tasks/{task_id}/run-again", response_class=HTMLResponse)
def confirm_run_again(
    request: Request, task_id: str, operator: ConsoleSession, db: SessionDep
) -> Response:
    record = ledger.get(db, task_id)
    if record is None:
        return error(request, operator, 404, f"no task with id {task_id!r} was ever sent")
    return page(
        request,
        "confirm.html",
        operator,
        title=f"Run {record.name} again?",
        detail=f"A new task with the arguments of {task_id}: {record.kwargs or 'none'}.",
        action=f"/console/tasks/{task_id}/run-again",
        fields={},
        button="Run again",
        back=f"/console/tasks/{task_id}",
    )


@router.post("/tasks/{task_id}/run-again")
def run_again(
    request: Request, task_id: str, operator: CheckedSession, celery: CeleryDep, db: SessionDep
) -> Response:
    record = ledger.get(db, task_id)
    if record is None:
        return error(request, operator, 404, f"no task with id {task_id!r} was ever sent")
    try:
        new_id = rerun.run_again(celery, db, record)
    except rerun.CannotRunAgain as exc:
        return error(request, operator, 409, str(exc))
    return _see(f"/console/tasks/{new_id}", Notice.RAN_AGAIN)


# -- deliveries ---------------------------------------------------------------------------------

_VERBS = {"redrive": "Re-drive", "discard": "Discard"}


@router.get("/deliveries/{verb}", response_class=HTMLResponse)
def confirm_bulk(request: Request, verb: str, operator: ConsoleSession, db: SessionDep) -> Response:
    if verb not in _VERBS:
        return error(request, operator, 404, f"no deliveries action {verb!r}")
    chosen = deliveries_view.bulk(request.query_params)
    if isinstance(chosen, str):
        return error(request, operator, 422, f"choose which deliveries: {chosen}")
    _, total = deliveries_view.matching(db, chosen, limit=0)
    return page(
        request,
        "confirm.html",
        operator,
        title=f"{_VERBS[verb]} {total} deliver{'y' if total == 1 else 'ies'}?",
        detail=(
            "They wait, due now, and Beat sends each once (the breaker permitting)."
            if verb == "redrive"
            else "They are never sent; kept for the record as discarded."
        ),
        count=total,
        action=f"/console/deliveries/{verb}",
        fields={k: v for k, v in request.query_params.items() if k in deliveries_view.FIELDS},
        button=f"{_VERBS[verb]} {total}",
        back=f"/console/deliveries?{deliveries_view.query_string(chosen)}",
    )


@router.post("/deliveries/{verb}")
async def bulk_action(
    request: Request, verb: str, operator: CheckedSession, db: SessionDep
) -> Response:
    if verb not in _VERBS:
        return error(request, operator, 404, f"no deliveries action {verb!r}")
    chosen = deliveries_view.bulk(await request.form())
    if isinstance(chosen, str):
        return error(request, operator, 422, f"choose which deliveries: {chosen}")
    act = deliveries.redrive_matching if verb == "redrive" else deliveries.discard_matching
    result = act(chosen, "admin", db)
    notice = Notice.REDRIVEN if verb == "redrive" else Notice.DISCARDED
    return _see("/console/deliveries", notice, count=result.matched, status=chosen.status)


@router.get("/delivery/{delivery_id}/{verb}", response_class=HTMLResponse)
def confirm_one(
    request: Request, delivery_id: int, verb: str, operator: ConsoleSession
) -> Response:
    if verb not in _VERBS:
        return error(request, operator, 404, f"no deliveries action {verb!r}")
    return page(
        request,
        "confirm.html",
        operator,
        title=f"{_VERBS[verb]} delivery {delivery_id}?",
        detail="Sent again now with its recorded payload (same idempotency key)."
        if verb == "redrive"
        else "It is never sent; kept for the record as discarded.",
        action=f"/console/delivery/{delivery_id}/{verb}",
        fields={},
        button=_VERBS[verb],
        back="/console/deliveries",
    )


@router.post("/delivery/{delivery_id}/{verb}")
def one_action(
    request: Request,
    delivery_id: int,
    verb: str,
    operator: CheckedSession,
    db: SessionDep,
    celery: CeleryDep,
) -> Response:
    if verb == "redrive":
        try:
            deliveries.retry(delivery_id, "admin", db, celery)
        except HTTPException as exc:
            return error(request, operator, exc.status_code, str(exc.detail))
        return _see("/console/deliveries", Notice.REDRIVEN, count=1)
    if verb == "discard":
        if not deliveries_view.discard_one(db, delivery_id):
            return error(
                request, operator, 409, f"delivery {delivery_id} is neither failed nor waiting"
            )
        commit(db)
        return _see("/console/deliveries", Notice.DISCARDED, count=1)
    return error(request, operator, 404, f"no deliveries action {verb!r}")


# -- dead letters -------------------------------------------------------------------------------


@router.get("/dead-letters/{letter_id}/discard", response_class=HTMLResponse)
def confirm_discard_letter(request: Request, letter_id: int, operator: ConsoleSession) -> Response:
    return page(
        request,
        "confirm.html",
        operator,
        title=f"Discard dead letter {letter_id}?",
        detail="It is deleted; the same message coming again is a new dead letter.",
        action=f"/console/dead-letters/{letter_id}/discard",
        fields={},
        button="Discard",
        back="/console/dead-letters",
    )


@router.post("/dead-letters/{letter_id}/discard")
def discard_letter(
    request: Request, letter_id: int, operator: CheckedSession, db: SessionDep
) -> Response:
    if not deadletters.discard(db, letter_id):
        return error(request, operator, 404, f"no dead letter with id {letter_id}")
    commit(db)
    return _see("/console/dead-letters", Notice.DEAD_LETTER_DISCARDED)
