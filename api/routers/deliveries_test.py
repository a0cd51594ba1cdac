"""The delivery routes in process, with no worker running: listing by status, one re-drive, bulk
re-drive and discard by filter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from api.conftest import ADMIN, QUERY, as_key
from ragcore.db import session_scope
from ragcore.db.models import FailedDelivery, TaskRecord
from ragcore.deliveries import DeliveryStatus
from ragcore.tasks import contracts

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _failed(status: DeliveryStatus, error: str = "HTTP 400", **values: Any) -> int:
    with session_scope() as session:
        defaults = {
            "task_name": contracts.SEND_SYSTEM_NOTIFICATION.name,
            "payload": {
                "notification_type": "n",
                "user_ids": ["u"],
                "title": "t",
                "message": "m",
                "idempotency_key": "k",
            },
            "created_at": T0,
        }
        row = FailedDelivery(
            task_id=f"t-{error}-{status}",
            error=error,
            attempts=4,
            status=status,
            **{**defaults, **values},
        )
        session.add(row)
        session.flush()
        return row.id


def _row(delivery_id: int) -> FailedDelivery:
    with session_scope() as session:
        row = session.get(FailedDelivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def test_the_list_shows_one_status_newest_first_with_its_total(client: TestClient) -> None:
    older, newer = _failed(DeliveryStatus.FAILED, "a"), _failed(DeliveryStatus.FAILED, "b")
    _failed(DeliveryStatus.WAITING, "c")
    body = client.get("/api/v1/deliveries/failed", headers=as_key(ADMIN)).json()
    assert [d["id"] for d in body["deliveries"]] == [newer, older] and body["total"] == 2
    every = client.get("/api/v1/deliveries/failed?status=all&limit=1", headers=as_key(ADMIN))
    assert every.json()["total"] == 3 and len(every.json()["deliveries"]) == 1


def test_the_routes_need_the_admin_key(client: TestClient) -> None:
    assert client.get("/api/v1/deliveries/failed", headers=as_key(QUERY)).status_code == 403


def test_a_retry_sends_the_task_once_and_waits_for_its_outcome(client: TestClient) -> None:
    delivery_id = _failed(DeliveryStatus.FAILED)
    first = client.post(f"/api/v1/deliveries/{delivery_id}/retry", headers=as_key(ADMIN))
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    # resolved by the re-drive's outcome, not by its publish
    assert first.json() == {"id": delivery_id, "task_id": task_id, "status": "waiting"}
    row = _row(delivery_id)
    assert (row.status, row.redrive_task_id) == (DeliveryStatus.WAITING, task_id)
    assert row.next_attempt_at is not None and row.waiting_since is not None
    assert row.next_attempt_at > row.waiting_since  # one backoff away, for the outcome
    with session_scope() as session:
        sent = session.scalar(select(TaskRecord.name).where(TaskRecord.task_id == task_id))
    assert sent == contracts.SEND_SYSTEM_NOTIFICATION.name
    again = client.post(f"/api/v1/deliveries/{delivery_id}/retry", headers=as_key(ADMIN))
    assert again.status_code == 409 and task_id in again.json()["detail"]


def test_a_retry_of_an_unknown_id_is_404_and_of_an_unknown_task_409(client: TestClient) -> None:
    missing = client.post("/api/v1/deliveries/999/retry", headers=as_key(ADMIN))
    assert missing.status_code == 404 and "999" in missing.json()["detail"]
    unknown = _failed(DeliveryStatus.FAILED, task_name="no_such_task")
    answer = client.post(f"/api/v1/deliveries/{unknown}/retry", headers=as_key(ADMIN))
    assert answer.status_code == 409 and "no_such_task" in answer.json()["detail"]


def test_a_retry_of_a_payload_its_contract_refuses_is_422_and_marks_nothing(
    client: TestClient,
) -> None:
    delivery_id = _failed(DeliveryStatus.FAILED, payload={"title": "t"})
    answer = client.post(f"/api/v1/deliveries/{delivery_id}/retry", headers=as_key(ADMIN))
    assert answer.status_code == 422 and "notification_type" in answer.json()["detail"]
    assert _row(delivery_id).status == DeliveryStatus.FAILED


def test_a_bulk_redrive_makes_the_matching_rows_wait_due_now(client: TestClient) -> None:
    refused, other = (
        _failed(DeliveryStatus.FAILED, "HTTP 400 x"),
        _failed(DeliveryStatus.FAILED, "y"),
    )
    answer = client.post(
        "/api/v1/deliveries/redrive", json={"error_contains": "http 400"}, headers=as_key(ADMIN)
    )
    assert answer.status_code == 200 and answer.json() == {"matched": 1}
    row = _row(refused)
    assert row.status == DeliveryStatus.WAITING and row.next_attempt_at is not None
    assert row.waiting_since == row.next_attempt_at and row.waiting_since > T0
    assert _row(other).status == DeliveryStatus.FAILED


def test_a_bulk_action_needs_a_criterion(client: TestClient) -> None:
    answer = client.post("/api/v1/deliveries/discard", json={}, headers=as_key(ADMIN))
    assert answer.status_code == 422 and "at least one" in answer.text


def test_a_discard_by_status_leaves_the_other_status_alone(client: TestClient) -> None:
    waiting, failed = _failed(DeliveryStatus.WAITING, "e"), _failed(DeliveryStatus.FAILED, "e")
    answer = client.post(
        "/api/v1/deliveries/discard",
        json={"status": "waiting", "task_name": contracts.SEND_SYSTEM_NOTIFICATION.name},
        headers=as_key(ADMIN),
    )
    assert answer.json() == {"matched": 1}
    assert (_row(waiting).status, _row(failed).status) == (
        DeliveryStatus.DISCARDED,
        DeliveryStatus.FAILED,
    )
