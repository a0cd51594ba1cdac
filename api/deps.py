"""Dependencies shared by the routers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ragcore.db import session_scope
from ragcore.settings import Settings

log = logging.getLogger(__name__)

#: What a caller hears when its write was not confirmed: nothing was stored, sending again is safe.
NOT_STORED = "the database did not confirm the write, nothing was stored; send the request again"


# The dependencies that do not block are coroutines: FastAPI runs a plain function in its thread
# pool, a round trip per dependency per request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_session() -> Iterator[Session]:
    # FastAPI runs the exit of a `yield` dependency after the response is sent: a route that answers
    # "stored" calls `commit` itself first; this commit only ends what read-only routes opened.
    with session_scope() as session:
        yield session


def commit(session: Session) -> None:
    """Make the request's writes durable before answering; a failed COMMIT is a 503, not a 202."""
    try:
        session.commit()
    except SQLAlchemyError as exc:
        log.warning("commit failed: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, NOT_STORED) from None


SettingsDep = Annotated[Settings, Depends(get_settings)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SessionDep = Annotated[Session, Depends(get_session)]
