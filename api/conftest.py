"""The real app in process (FastAPI's TestClient) on a private Redis and a SQLite database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from ragcore.db import create_schema, reset_engines
from ragcore.settings import get_settings
from ragcore_dev.servers import RedisServer, redis_server

ADMIN, QUERY, SYNC = "admin-key", "query-key", "sync-key"


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture(scope="module")
def broker() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def app_settings(
    broker: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """`RAGCORE_*` for an app on the private Redis and a fresh SQLite database, read afresh."""
    settings = {
        "environment": "test",
        "redis_url": broker.url,
        "database_url": f"sqlite:///{tmp_path}/api.db",
        "api_keys": json.dumps({ADMIN: "admin", QUERY: "query", SYNC: "sync"}),
        "qdrant_path": str(tmp_path / "qdrant"),
        # No worker runs here: a short broadcast wait keeps list and workers quick.
        "inspect_timeout_seconds": "0.05",
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"RAGCORE_{name.upper()}", value)
    get_settings.cache_clear()
    reset_engines()
    redis.Redis.from_url(broker.url).flushall()  # each test starts from an empty broker
    create_schema()  # as the migration job leaves it: the API never writes the schema
    yield
    get_settings.cache_clear()
    reset_engines()


@pytest.fixture
def client(app_settings: None) -> Iterator[TestClient]:
    """The app as `python -m api.main` builds it, its lifespan run."""
    app = create_app()
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.celery.close()
