"""Dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from ragcore.db import session_scope
from ragcore.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SessionDep = Annotated[Session, Depends(get_session)]
