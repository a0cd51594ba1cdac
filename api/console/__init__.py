"""The operator console at /console: server-rendered pages over the ledger, the broker and the
deliveries, for an admin key (README "Try it"). Off (every URL a 404) with RAGCORE_CONSOLE=false.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from api.console import actions, pages
from api.console.render import error
from api.console.session import CsrfRefused, SignInRequired, secret_of
from ragcore.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the console from `app`, unless the settings turn it off."""
    if not settings.api.console:
        return
    app.state.console_secret = secret_of(settings)
    app.include_router(actions.router)
    app.include_router(pages.router)
    app.mount(
        "/console/static",
        StaticFiles(directory=Path(__file__).parent / "static"),
        name="console-static",
    )

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> Response:
        if request.method != "GET":
            return error(request, None, 401, "your session ended: sign in again")
        return RedirectResponse(f"/console/sign-in?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, _: CsrfRefused) -> Response:
        return error(
            request,
            None,
            403,
            "this form carries no valid token of your session (it is stale, or it did not come "
            "from this console): open the page again and resend it",
        )
