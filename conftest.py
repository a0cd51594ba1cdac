"""Fixtures for the unit tests that sit next to their code, anywhere in the repository."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy.orm import Session

from ragcore.db import create_schema, get_engine, session_scope
from ragcore_dev.servers import redis_server


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[Callable[[], AbstractContextManager[Session]]]:
    """`with sessions() as session:` on a fresh SQLite database with the schema."""
    url = f"sqlite:///{tmp_path}/unit.db"
    create_schema(url)
    yield partial(session_scope, url)
    get_engine(url).dispose()


@pytest.fixture
def celery_on_redis() -> Iterator[tuple[Celery, redis.Redis]]:
    """A bare Celery app on a private redis-server, and a client of that Redis."""
    with redis_server() as server:
        app = Celery("unit", broker=server.url)
        yield app, redis.Redis.from_url(server.url)
        app.close()
