"""The sync routes in process: each sends its task by contract or stores Ingest's events, or says
why not (401/403/422, 503 while the broker is down)."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.conftest import ADMIN, QUERY, SYNC, as_key
from api.errors import BROKER_UNREACHABLE
from ragcore.db import session_scope
from ragcore.db.models import SyncEvent, TaskRecord
from ragcore.tasks import contracts
from ragcore_dev.servers import RedisServer


def _ledger(task_id: str) -> TaskRecord | None:
    with session_scope() as session:
        return session.get(TaskRecord, task_id)


def _waiting(broker: RedisServer, queue: str) -> int:
    return int(redis.Redis.from_url(broker.url).llen(queue))


def test_a_full_sync_is_sent_to_the_sync_queue_and_recorded(
    client: TestClient, broker: RedisServer
) -> None:
    response = client.post("/api/v1/sync/trigger-full-sync", headers=as_key(SYNC))
    assert response.status_code == 202
    record = _ledger(response.json()["task_id"])
    assert record is not None
    assert (record.name, record.queue, record.state) == (
        contracts.TRIGGER_FULL_SYNC.name, "sync", "PENDING",
    )  # fmt: skip
    assert _waiting(broker, "sync") == 1


def test_an_incremental_sync_carries_its_arguments(client: TestClient) -> None:
    body = {"since": "2026-01-01T00:00:00Z", "batch_size": 10}
    response = client.post("/api/v1/sync/trigger-sync", headers=as_key(ADMIN), json=body)
    assert response.status_code == 202
    record = _ledger(response.json()["task_id"])
    assert record is not None and record.name == contracts.SYNC_EMBEDDINGS.name
    assert record.kwargs["batch_size"] == 10 and record.kwargs["since"].startswith("2026-01-01")


def test_an_incremental_sync_with_bad_arguments_is_422_naming_the_field(
    client: TestClient,
) -> None:
    response = client.post("/api/v1/sync/trigger-sync", headers=as_key(SYNC), json={"since": 5})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "since"


def test_a_document_id_with_slashes_is_deleted_as_one_id(client: TestClient) -> None:
    response = client.delete("/api/v1/sync/document/a/b%2Fc", headers=as_key(SYNC))
    assert response.status_code == 202
    record = _ledger(response.json()["task_id"])
    assert record is not None
    assert record.name == contracts.DELETE_DOCUMENT_EMBEDDINGS.name
    assert record.kwargs == {"document_id": "a/b/c"}


def test_change_events_are_stored_before_the_202(client: TestClient) -> None:
    events = [
        {"document_id": "d1", "action": "upsert", "occurred_at": "2026-01-01T00:00:00Z"},
        {"document_id": "d2", "action": "delete", "occurred_at": "2026-01-01T00:00:01+02:00"},
    ]
    response = client.post("/api/v1/sync/events", headers=as_key(SYNC), json={"events": events})
    assert (response.status_code, response.json()) == (202, {"stored": 2})
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(SyncEvent)) == 2


def test_an_invalid_event_stores_nothing(client: TestClient) -> None:
    events = [
        {"document_id": "d1", "action": "upsert", "occurred_at": "2026-01-01T00:00:00Z"},
        {"document_id": "d2", "action": "rename", "occurred_at": "2026-01-01T00:00:00Z"},
    ]
    response = client.post("/api/v1/sync/events", headers=as_key(SYNC), json={"events": events})
    assert response.status_code == 422
    assert "events.1.action" in response.json()["detail"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(SyncEvent)) == 0


def test_a_query_key_or_no_key_may_not_sync(client: TestClient) -> None:
    assert client.post("/api/v1/sync/trigger-full-sync", headers=as_key(QUERY)).status_code == 403
    assert client.post("/api/v1/sync/trigger-full-sync").status_code == 401


def test_with_the_broker_down_a_sync_is_503_and_leaves_no_ledger_row(
    client: TestClient, broker: RedisServer
) -> None:
    broker.stop()
    try:
        response = client.post("/api/v1/sync/trigger-full-sync", headers=as_key(SYNC))
    finally:
        broker.start()
    assert response.status_code == 503
    assert response.json()["detail"] == BROKER_UNREACHABLE
    assert response.json()["request_id"] == response.headers["X-Request-ID"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(TaskRecord)) == 0
