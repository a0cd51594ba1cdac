"""The notifications worker reports to the Users stand-in once per idempotency key, retries only
what may succeed later, and records what it gives up on for an operator to re-drive through the
API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from ragcore.db import session_scope, utcnow
from ragcore.db.models import Conversation, Message
from ragcore.tasks import contracts, dispatch
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from services.notifications.usage import latest_reportable_hour
from tests.support.stack import QUERY_KEY, Stack

QUERY_RESULTS = "/api/v1/rag/query-results"


@pytest.fixture(scope="module")
def users() -> Iterator[Running[UsersApp]]:
    with start_users() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def deployed(stack: Stack, users: Running[UsersApp]) -> None:
    stack.start_api()
    stack.start_worker(
        contracts.Queue.NOTIFICATIONS,
        users_url=users.url,
        http_timeout_seconds="3",
        usage_report_lag_seconds="0",
    )


@pytest.fixture(autouse=True)
def fresh(users: Running[UsersApp]) -> Iterator[None]:
    users.app.reset()
    yield
    users.app.faults.clear()


def query_result(**overrides: Any) -> dict[str, Any]:
    return {
        "user_id": "user-1",
        "conversation_id": "conv-1",
        "message_id": f"msg-{uuid.uuid4()}",
        "query": "glacier harbor safety",
        "answer": "Harbor safety. [1]",
        "sources": [
            {
                "document_id": "doc-1",
                "chunk_id": "doc-1/chunk-002",
                "score": 0.8,
                "text": "Harbor safety.",
                "metadata": {},
            }
        ],
        "tokens_used": 7,
        "processing_time_ms": 12.5,
        **overrides,
    }


def deliveries_of(users: Running[UsersApp], kind: str, key: str) -> list[dict[str, Any]]:
    return [d for d in users.app.deliveries(kind) if d["idempotency_key"] == key]


def finished(stack: Stack, task_id: str) -> str:
    """The final state the task API reports (deliveries keep no Redis result: the ledger
    answers)."""

    def state() -> str | None:
        with stack.api() as api:
            status = api.get(f"/api/v1/tasks/status/{task_id}").json()["status"]
        return status if status in ("SUCCESS", "FAILURE") else None

    return str(wait_until(state, 30, f"task {task_id}"))


def test_a_query_result_reaches_users_once_with_the_eight_fields_keyed_by_message_id(
    stack: Stack, users: Running[UsersApp]
) -> None:
    payload = query_result()
    task_id = dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, payload)
    assert finished(stack, task_id) == "SUCCESS"
    [delivery] = deliveries_of(users, "query-results", payload["message_id"])
    assert delivery["payload"] == payload


def test_users_503_then_200_is_retried_and_delivered_once(
    stack: Stack, users: Running[UsersApp]
) -> None:
    users.app.faults.fail(503, times=1, path=QUERY_RESULTS)
    payload = query_result()
    task_id = dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, payload)
    assert finished(stack, task_id) == "SUCCESS"
    assert [e["status"] for e in users.app.log.entries(QUERY_RESULTS)] == [503, 201]
    assert len(deliveries_of(users, "query-results", payload["message_id"])) == 1
    with stack.api() as api:
        assert api.get(f"/api/v1/tasks/status/{task_id}").json()["retries"] == 1


def test_an_answer_lost_after_users_recorded_it_is_not_counted_twice(
    stack: Stack, users: Running[UsersApp]
) -> None:
    # recorded, then the answer is lost
    users.app.faults.fail(503, times=1, path=QUERY_RESULTS, after=True)
    payload = query_result()
    assert (
        finished(stack, dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, payload))
        == "SUCCESS"
    )
    assert [e["status"] for e in users.app.log.entries(QUERY_RESULTS)] == [503, 409]
    assert len(deliveries_of(users, "query-results", payload["message_id"])) == 1


def test_users_400_is_not_retried_is_recorded_and_is_redriven_through_the_api(
    stack: Stack, users: Running[UsersApp]
) -> None:
    users.app.faults.fail(400, times=1, path=QUERY_RESULTS)
    payload = query_result()
    task_id = dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, payload)
    assert finished(stack, task_id) == "FAILURE"
    assert [e["status"] for e in users.app.log.entries(QUERY_RESULTS)] == [400]
    with stack.api() as api:
        listed = api.get("/api/v1/deliveries/failed").json()["deliveries"]
        [failed] = [d for d in listed if d["task_id"] == task_id]
        assert (failed["task_name"], failed["payload"], failed["attempts"], failed["status"]) == (
            "send_query_result_to_users",
            payload,
            1,
            "failed",
        )
        assert failed["error"].startswith("HTTP 400 from POST")
        assert deliveries_of(users, "query-results", payload["message_id"]) == []

        redriven = api.post(f"/api/v1/deliveries/{failed['id']}/retry")
        assert redriven.status_code == 202, redriven.text
        assert finished(stack, redriven.json()["task_id"]) == "SUCCESS"
        assert len(deliveries_of(users, "query-results", payload["message_id"])) == 1
        [marked] = [
            d
            for d in api.get("/api/v1/deliveries/failed", params={"status": "redriven"}).json()[
                "deliveries"
            ]
            if d["id"] == failed["id"]
        ]
        assert marked["redrive_task_id"] == redriven.json()["task_id"] and marked["redriven_at"]
        assert api.post(f"/api/v1/deliveries/{failed['id']}/retry").status_code == 409
        assert api.post("/api/v1/deliveries/999999/retry").status_code == 404


def test_failed_deliveries_need_the_admin_key(stack: Stack) -> None:
    with stack.api(QUERY_KEY) as api:
        assert api.get("/api/v1/deliveries/failed").status_code == 403
        assert api.post("/api/v1/deliveries/1/retry").status_code == 403


def test_usage_statistics_report_the_last_complete_hour_per_user_once_per_period(
    stack: Stack, users: Running[UsersApp]
) -> None:
    start = latest_reportable_hour(utcnow(), timedelta(0))
    with session_scope() as session:
        session.add(Conversation(id="usage-conv", user_id="usage-a"))
        for i, (user, minute, tokens) in enumerate(
            [("usage-a", 1, 10), ("usage-a", 59, 30), ("usage-b", 30, 5), ("usage-b", 61, 99)]
        ):
            session.add(
                Message(
                    id=f"usage-{i}",
                    conversation_id="usage-conv",
                    user_id=user,
                    query="q",
                    answer="a",
                    sources=[],
                    tokens_used=tokens,
                    processing_time_ms=100.0 * (i + 1),
                    created_at=start + timedelta(minutes=minute),
                )
            )
    for _ in range(2):  # the second run finds the hour recorded as reported: it sends nothing
        assert (
            finished(stack, dispatch.send(stack.producer, contracts.SEND_USAGE_STATISTICS))
            == "SUCCESS"
        )
    [report] = users.app.deliveries("usage-statistics")
    assert (
        report["idempotency_key"]
        == f"{start.isoformat()}/{(start + timedelta(hours=1)).isoformat()}"
    )
    by_user = {u["user_id"]: u for u in report["payload"]["users"]}
    assert by_user["usage-a"] == {
        "user_id": "usage-a",
        "queries": 2,
        "tokens_used": 40,
        "avg_processing_time_ms": 150.0,
    }
    assert by_user["usage-b"]["queries"] == 1
    assert users.app.duplicates["usage-statistics"] == 0


def test_a_system_notification_is_sent_under_the_senders_key(
    stack: Stack, users: Running[UsersApp]
) -> None:
    args = {
        "notification_type": "maintenance",
        "title": "Downtime",
        "message": "Tonight 02:00 UTC",
        "user_ids": ["u1", "u2"],
        "metadata": {"window_minutes": 30},
        "idempotency_key": "maintenance-2024-05-10",
    }
    assert (
        finished(stack, dispatch.send(stack.producer, contracts.SEND_SYSTEM_NOTIFICATION, args))
        == "SUCCESS"
    )
    [sent] = users.app.deliveries("notifications")
    assert sent["idempotency_key"] == "maintenance-2024-05-10"
    assert sent["payload"] == {k: v for k, v in args.items() if k != "idempotency_key"}


def test_a_recomputed_usage_hour_goes_out_under_a_key_of_its_own(
    stack: Stack, users: Running[UsersApp]
) -> None:
    start = latest_reportable_hour(utcnow(), timedelta(0)) - timedelta(hours=5)
    period = f"{start.isoformat()}/{(start + timedelta(hours=1)).isoformat()}"

    def add(i: int) -> None:
        with session_scope() as session:
            if session.get(Conversation, "recomputed") is None:
                session.add(Conversation(id="recomputed", user_id="late"))
            session.add(
                Message(
                    id=f"recomputed-{i}",
                    conversation_id="recomputed",
                    user_id="late",
                    query="q",
                    answer="a",
                    sources=[],
                    tokens_used=10,
                    processing_time_ms=1.0,
                    created_at=start + timedelta(minutes=10 + i),
                )
            )

    def report_hour() -> None:
        pinned = {"period_start": start.isoformat()}  # an operator's recomputation of the hour
        task_id = dispatch.send(stack.producer, contracts.SEND_USAGE_STATISTICS, pinned)
        assert finished(stack, task_id) == "SUCCESS"

    add(0)
    report_hour()
    report_hour()  # the same numbers again: the same key, and Users' 409 means delivered
    add(1)  # a late query changes the hour's numbers
    report_hour()
    sent = [
        (d["idempotency_key"], d["payload"]["users"][0]["queries"])
        for d in users.app.deliveries("usage-statistics")
        if d["payload"]["period_start"] == start.isoformat()
    ]
    # SPEC's key for the first numbers; the recomputed ones under revision 1, not dropped as seen
    assert sent == [(period, 1), (f"{period}/r1", 2)]
    assert users.app.duplicates["usage-statistics"] == 1


def test_a_notification_key_already_sent_with_other_content_is_refused_at_the_api(
    stack: Stack, users: Running[UsersApp]
) -> None:
    first = {
        "notification_type": "maintenance",
        "title": "Downtime",
        "message": "Tonight 02:00 UTC",
        "user_ids": ["u1"],
        "idempotency_key": "colliding-key",
    }
    with stack.api() as api:
        accepted = api.post("/api/v1/notifications", json=first)
        assert accepted.status_code == 202, accepted.text
        assert finished(stack, accepted.json()["task_id"]) == "SUCCESS"
        again = api.post("/api/v1/notifications", json=first)  # the same content: fine
        assert again.status_code == 202
        refused = api.post("/api/v1/notifications", json={**first, "message": "Postponed"})
    assert refused.status_code == 409
    assert (
        "'colliding-key' was already used for a notification with other content"
        in (refused.json()["detail"])
    )
    # a task sent by another client with that key fails with the reason, not dropped at Users
    other = dispatch.send(
        stack.producer, contracts.SEND_SYSTEM_NOTIFICATION, {**first, "message": "Postponed"}
    )
    assert finished(stack, other) == "FAILURE"
    with stack.api() as api:
        assert "already used" in api.get(f"/api/v1/tasks/status/{other}").json()["error"]
    sent = deliveries_of(users, "notifications", "colliding-key")
    assert [d["payload"]["message"] for d in sent] == ["Tonight 02:00 UTC"]
