"""X-API-Key: 401 without a key or with an unknown one, 403 for a key without the scope."""

from collections.abc import Iterator

import pytest

from tests.support.stack import ADMIN_KEY, Stack


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[Stack]:
    stack.start_api()
    yield stack


def test_missing_key_is_401_with_a_message(api: Stack) -> None:
    with api.api(key=None) as client:
        response = client.get("/api/v1/tasks/status/some-id")
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]


def test_unknown_key_is_401(api: Stack) -> None:
    with api.api(key="not-a-key") as client:
        response = client.get("/api/v1/tasks/status/some-id")
    assert response.status_code == 401
    assert response.json()["detail"] == "unknown API key"


def test_status_of_an_id_never_sent_is_404(api: Stack) -> None:
    with api.api(key=ADMIN_KEY) as client:
        response = client.get("/api/v1/tasks/status/never-sent")
    assert response.status_code == 404
    assert "never-sent" in response.json()["detail"]


def test_readyz_reports_redis_and_database(api: Stack) -> None:
    with api.api(key=None) as client:
        body = client.get("/readyz").json()
    assert body == {"status": "ready", "checks": {"redis": "ok", "database": "ok"}}


def test_readyz_is_503_when_redis_is_down(api: Stack) -> None:
    api.redis.stop()
    try:
        with api.api(key=None) as client:
            response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["redis"].startswith("unreachable")
    finally:
        api.redis.start()
