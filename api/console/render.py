"""Rendering console pages: the templates, the values every page shows, and the error page."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.console.session import Operator

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


class Notice(StrEnum):
    """What the page after an action says happened (a closed set: no text from the URL is shown)."""

    SIGNED_OUT = "signed out"
    REVOKED = "revoked"
    TERMINATED = "revoked; the running task is being terminated"
    RAN_AGAIN = "sent again as this task"
    REDRIVEN = "re-driven"
    DISCARDED = "discarded"
    DEAD_LETTER_DISCARDED = "dead letter discarded"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def moment(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "–"


templates.env.filters["age"] = age
templates.env.filters["moment"] = moment


def page(
    request: Request,
    name: str,
    operator: Operator | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    notice = request.query_params.get("notice", "")
    values.setdefault("notice", Notice[notice].value if notice in Notice.__members__ else None)
    count = request.query_params.get("count", "")
    values.setdefault("count", int(count) if count.isdigit() else None)
    return templates.TemplateResponse(
        request,
        name,
        {"operator": operator, "now": datetime.now(UTC), **values},
        status_code=status_code,
    )


def error(
    request: Request, operator: Operator | None, status_code: int, message: str
) -> HTMLResponse:
    return page(request, "error.html", operator, status_code=status_code, message=message)
