"""The task routes in process, with no worker running: status from Redis and the ledger, history,
the bounded worker broadcast, queues, revocation and the manual triggers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from api.conftest import ADMIN, QUERY, SYNC, as_key
from api.errors import BROKER_UNREACHABLE
from ragcore.broker import revocation_feed
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts
from ragcore_dev.servers import RedisServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _record(task_id: str, contract: contracts.TaskContract, state: str, **values: Any) -> None:
    with session_scope() as session:
        session.add(TaskRecord(
            task_id=task_id, name=contract.name, queue=contract.queue.value, state=state,
            kwargs={}, **{"sent_at": T0, **values},
        ))  # fmt: skip


def _trigger(client: TestClient, route: str) -> str:
    response = client.post(f"/api/v1/tasks/trigger/{route}", headers=as_key(ADMIN))
    assert response.status_code == 202
    task_id: str = response.json()["task_id"]
    return task_id


# -- status ---------------------------------------------------------------------------------------


def test_a_sent_task_is_pending_with_its_name_and_queue(client: TestClient) -> None:
    task_id = _trigger(client, "cleanup-cache")
    body = client.get(f"/api/v1/tasks/status/{task_id}", headers=as_key(ADMIN)).json()
    assert (body["status"], body["name"], body["queue"]) == (
        "PENDING", contracts.CLEANUP_OLD_CACHE.name, "cleanup",
    )  # fmt: skip


def test_an_id_never_sent_is_404_and_a_malformed_one_422(client: TestClient) -> None:
    missing = client.get("/api/v1/tasks/status/never-sent", headers=as_key(ADMIN))
    assert missing.status_code == 404 and "never-sent" in missing.json()["detail"]
    malformed = client.get("/api/v1/tasks/status/-bad", headers=as_key(ADMIN))
    assert malformed.status_code == 422


def test_a_result_redis_no_longer_has_is_answered_from_the_ledger(client: TestClient) -> None:
    _record("t-old", contracts.SYNC_EMBEDDINGS, "SUCCESS", result={"value": 7}, finished_at=T0)
    body = client.get("/api/v1/tasks/status/t-old", headers=as_key(SYNC)).json()
    assert (body["status"], body["result"]) == ("SUCCESS", 7)


def test_a_live_result_is_answered_from_redis(client: TestClient) -> None:
    app: Any = client.app
    app.state.celery.backend.store_result("t-live", {"copied": 3}, "SUCCESS")
    body = client.get("/api/v1/tasks/status/t-live", headers=as_key(ADMIN)).json()
    assert (body["status"], body["result"]) == ("SUCCESS", {"copied": 3})


def test_a_sync_key_reads_sync_tasks_only_and_never_a_traceback(client: TestClient) -> None:
    _record("t-sync", contracts.SYNC_EMBEDDINGS, "FAILURE", error="E: x", traceback="Traceback")
    _record("t-cleanup", contracts.CLEANUP_OLD_CACHE, "SUCCESS")
    as_sync = client.get("/api/v1/tasks/status/t-sync", headers=as_key(SYNC)).json()
    as_admin = client.get("/api/v1/tasks/status/t-sync", headers=as_key(ADMIN)).json()
    # the exception's name only, and the request id under which the API logged the rest
    assert as_sync["error"].startswith("the task failed (E); an admin key reads the details")
    assert as_sync["traceback"] is None and as_admin["error"] == "E: x"
    assert as_admin["traceback"] == "Traceback"
    other = client.get("/api/v1/tasks/status/t-cleanup", headers=as_key(SYNC))
    assert other.status_code == 403 and "sync tasks only" in other.json()["detail"]
    assert client.get("/api/v1/tasks/status/t-sync", headers=as_key(QUERY)).status_code == 403


def test_with_redis_down_the_status_still_answers_from_the_ledger(
    client: TestClient, broker: RedisServer
) -> None:
    _record("t-down", contracts.SYNC_EMBEDDINGS, "FAILURE", error="E: y")
    broker.stop()
    try:
        response = client.get("/api/v1/tasks/status/t-down", headers=as_key(ADMIN))
    finally:
        broker.start()
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["error"]) == ("FAILURE", "E: y")


# -- history --------------------------------------------------------------------------------------


def test_history_pages_newest_first_and_filters_by_status(client: TestClient) -> None:
    for n, state in enumerate(["SUCCESS", "FAILURE", "SUCCESS"]):
        _record(f"t{n}", contracts.CLEANUP_OLD_CACHE, state, sent_at=T0 + timedelta(minutes=n))
    page = client.get("/api/v1/tasks/history?limit=2", headers=as_key(ADMIN)).json()
    assert [item["task_id"] for item in page["items"]] == ["t2", "t1"]
    rest = client.get(
        "/api/v1/tasks/history", params={"cursor": page["next_cursor"]}, headers=as_key(ADMIN)
    ).json()
    assert ([item["task_id"] for item in rest["items"]], rest["next_cursor"]) == (["t0"], None)
    failed = client.get("/api/v1/tasks/history?status=FAILURE", headers=as_key(ADMIN)).json()
    assert [item["task_id"] for item in failed["items"]] == ["t1"]


@pytest.mark.parametrize(
    "query", ["name=no_such_task", "status=LOST", "limit=0", "cursor=nonsense", "since=123"]
)
def test_history_refuses_bad_filters_with_422(client: TestClient, query: str) -> None:
    response = client.get(f"/api/v1/tasks/history?{query}", headers=as_key(ADMIN))
    assert response.status_code == 422 and response.json()["detail"].startswith("invalid request")


def test_history_is_for_admin_keys_only(client: TestClient) -> None:
    assert client.get("/api/v1/tasks/history", headers=as_key(SYNC)).status_code == 403


# -- workers and queues ---------------------------------------------------------------------------


def test_with_no_worker_the_broadcast_answers_empty_after_its_timeout(client: TestClient) -> None:
    held = client.get("/api/v1/tasks/list", headers=as_key(ADMIN)).json()
    assert held == {
        "active": [], "scheduled": [], "reserved": [], "workers": [], "timeout_seconds": 0.05,
    }  # fmt: skip
    found = client.get("/api/v1/tasks/workers", headers=as_key(ADMIN)).json()
    assert found == {"status": "success", "workers": [], "total_workers": 0}


def test_queues_show_what_waits_and_flag_queues_no_worker_consumes(client: TestClient) -> None:
    _trigger(client, "cleanup-cache")
    queues = {q["name"]: q for q in client.get("/api/v1/tasks/queues", headers=as_key(ADMIN))
              .json()["queues"]}  # fmt: skip
    assert set(queues) == {q.value for q in contracts.Queue}
    assert (queues["cleanup"]["depth"], queues["sync"]["depth"]) == (1, 0)
    assert all(q["flagged"] and q["warning"] == "no worker consumes this queue"
               for q in queues.values())  # fmt: skip


def test_with_the_broker_down_broker_routes_are_one_503(
    client: TestClient, broker: RedisServer
) -> None:
    broker.stop()
    try:
        responses = [
            client.get("/api/v1/tasks/queues", headers=as_key(ADMIN)),
            client.post("/api/v1/tasks/trigger/send-statistics", headers=as_key(ADMIN)),
        ]
    finally:
        broker.start()
    for response in responses:
        assert response.status_code == 503
        assert response.json()["detail"] == BROKER_UNREACHABLE
        assert response.json()["request_id"] == response.headers["X-Request-ID"]


# -- revoke ---------------------------------------------------------------------------------------


def test_an_id_no_worker_received_is_revoked_ahead_with_202(
    client: TestClient, broker: RedisServer
) -> None:
    response = client.post("/api/v1/tasks/revoke/t-future", headers=as_key(ADMIN))
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["terminated"]) == ("REVOKED", False)
    with session_scope() as session:
        record = session.get(TaskRecord, "t-future")
        assert record is not None and record.revoked
    revoked, _ = revocation_feed.revocations_since(redis.Redis.from_url(broker.url), 0)
    assert revoked == ["t-future"]


def test_a_waiting_task_is_revoked_and_will_not_run(client: TestClient) -> None:
    task_id = _trigger(client, "reset-daily-limits")
    response = client.post(f"/api/v1/tasks/revoke/{task_id}", headers=as_key(ADMIN))
    assert response.status_code == 200
    assert (response.json()["detail"], response.json()["status"]) == (
        "revoked; it will not run", "REVOKED",
    )  # fmt: skip
    status = client.get(f"/api/v1/tasks/status/{task_id}", headers=as_key(ADMIN)).json()
    assert status["revoked"] is True


def test_a_finished_task_cannot_be_revoked(client: TestClient) -> None:
    _record("t-done", contracts.CLEANUP_OLD_CACHE, "SUCCESS")
    response = client.post("/api/v1/tasks/revoke/t-done", headers=as_key(ADMIN))
    assert response.status_code == 409 and "already finished" in response.json()["detail"]


# -- triggers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "contract"),
    [
        ("cleanup-cache", contracts.CLEANUP_OLD_CACHE),
        ("reset-daily-limits", contracts.RESET_ALL_DAILY_LIMITS),
        ("send-statistics", contracts.SEND_USAGE_STATISTICS),
    ],
)
def test_a_trigger_sends_its_task_to_its_queue(
    client: TestClient, broker: RedisServer, route: str, contract: contracts.TaskContract
) -> None:
    response = client.post(f"/api/v1/tasks/trigger/{route}", headers=as_key(ADMIN))
    assert (response.status_code, response.json()["name"]) == (202, contract.name)
    assert redis.Redis.from_url(broker.url).llen(contract.queue.value) == 1


def test_triggers_are_for_admin_keys_only(client: TestClient) -> None:
    response = client.post("/api/v1/tasks/trigger/cleanup-cache", headers=as_key(SYNC))
    assert response.status_code == 403
