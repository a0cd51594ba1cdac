"""Liveness and readiness, in process: open to anyone, and readiness says what failed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ragcore_dev.servers import RedisServer


def test_healthz_answers_ok_without_a_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_ready_when_redis_and_the_database_answer(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "database": "ok"}}


def test_readyz_is_503_naming_redis_while_it_is_down(
    client: TestClient, broker: RedisServer
) -> None:
    broker.stop()
    try:
        response = client.get("/readyz")
    finally:
        broker.start()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "unreachable"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "127.0.0.1" not in response.text and "Error" not in response.text  # what, never where


def test_an_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
