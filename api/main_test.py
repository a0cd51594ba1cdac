"""The app's start-up: it refuses to start on a broker that could lose queued tasks."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from ragcore.invariants import InvariantError
from ragcore_dev.servers import RedisServer


def test_the_app_refuses_to_start_on_a_broker_that_evicts_keys(
    app_settings: None, broker: RedisServer
) -> None:
    client = redis.Redis.from_url(broker.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with (
            pytest.raises(InvariantError, match="maxmemory-policy=allkeys-lru"),
            TestClient(create_app()),
        ):
            pass
    finally:
        client.config_set("maxmemory-policy", "noeviction")


def test_the_app_starts_on_a_broker_that_never_evicts(app_settings: None) -> None:
    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200
