"""The Users stand-in records each delivery once per Idempotency-Key; UsersClient treats 409 as
success."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ragcore.clients.transport import is_retryable
from ragcore.clients.users import UsersClient
from ragcore_dev.processes import deployable_env, free_port, wait_until_up
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users

TOKEN = "users-secret"


@pytest.fixture(scope="module")
def users() -> Iterator[Running[UsersApp]]:
    with start_users(token=TOKEN) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(users: Running[UsersApp]) -> Iterator[None]:
    users.app.reset()
    yield
    users.app.faults.clear()


@pytest.fixture
def client(users: Running[UsersApp]) -> Iterator[UsersClient]:
    with httpx.Client(timeout=2) as http:
        yield UsersClient(http, users.url, TOKEN)


def query_result(message_id: str = "msg-1") -> dict[str, Any]:
    return {
        "user_id": "u1",
        "conversation_id": "c1",
        "message_id": message_id,
        "query": "what is a glacier?",
        "answer": "ice",
        "sources": [
            {"document_id": "d1", "chunk_id": "d1/0", "score": 0.9, "text": "ice", "metadata": {}}
        ],
        "tokens_used": 12,
        "processing_time_ms": 34.5,
    }


def test_first_delivery_is_recorded_and_a_repeat_is_409_and_not_recorded_twice(
    users: Running[UsersApp], client: UsersClient
) -> None:
    assert client.send_query_result(query_result()) == 201
    assert client.send_query_result(query_result()) == 409  # success for the caller: no exception
    deliveries = users.app.deliveries("query-results")
    assert len(deliveries) == 1
    assert deliveries[0]["idempotency_key"] == "msg-1"
    assert deliveries[0]["payload"] == query_result()
    assert users.app.duplicates["query-results"] == 1


def test_the_same_key_on_another_endpoint_is_a_separate_delivery(
    users: Running[UsersApp], client: UsersClient
) -> None:
    client.send_query_result(query_result("k"))
    payload = {
        "notification_type": "info",
        "title": "t",
        "message": "m",
        "user_ids": ["u1"],
        "metadata": {},
    }
    assert client.send_notification(payload, "k") == 201
    assert len(users.app.deliveries()) == 2


def test_usage_statistics_are_keyed_by_period(
    users: Running[UsersApp], client: UsersClient
) -> None:
    start, end = (
        datetime(2024, 5, 1, 10, tzinfo=UTC),
        datetime(2024, 5, 1, 11, tzinfo=UTC),
    )
    payload = {
        "period_start": start,
        "period_end": end,
        "users": [
            {"user_id": "u1", "queries": 3, "tokens_used": 30, "avg_processing_time_ms": 12.0}
        ],
    }
    assert client.send_usage_statistics(payload) == 201
    assert client.send_usage_statistics(payload) == 409
    [delivery] = users.app.deliveries("usage-statistics")
    assert delivery["idempotency_key"] == "2024-05-01T10:00:00+00:00/2024-05-01T11:00:00+00:00"
    assert delivery["payload"]["period_start"] == "2024-05-01T10:00:00+00:00"


def test_control_api_lists_deliveries_by_kind(
    users: Running[UsersApp], client: UsersClient
) -> None:
    client.send_query_result(query_result("a"))
    client.send_notification(
        {"notification_type": "x", "title": "t", "message": "m", "user_ids": [], "metadata": {}},
        "n1",
    )
    body = httpx.get(users.url + "/_control/deliveries", params={"kind": "notifications"}).json()
    assert [d["idempotency_key"] for d in body["deliveries"]] == ["n1"]
    assert len(httpx.get(users.url + "/_control/deliveries").json()["deliveries"]) == 2
    httpx.post(users.url + "/_control/reset")
    assert httpx.get(users.url + "/_control/deliveries").json()["deliveries"] == []


def test_wrong_token_is_a_permanent_401(users: Running[UsersApp]) -> None:
    with httpx.Client(timeout=2) as http, pytest.raises(httpx.HTTPStatusError) as caught:
        UsersClient(http, users.url, "wrong").send_query_result(query_result())
    assert caught.value.response.status_code == 401
    assert not is_retryable(caught.value)
    assert users.app.deliveries() == []


def test_missing_fields_are_a_permanent_422(client: UsersClient) -> None:
    with pytest.raises(httpx.HTTPStatusError) as caught:
        client.send_notification({"title": "only a title"}, "n-bad")
    assert caught.value.response.status_code == 422
    assert not is_retryable(caught.value)


def test_missing_idempotency_key_is_refused(users: Running[UsersApp]) -> None:
    response = httpx.post(
        users.url + "/api/v1/rag/query-results",
        json=query_result(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 400
    assert users.app.deliveries() == []


def test_injected_503_is_retryable_and_records_nothing(
    users: Running[UsersApp], client: UsersClient
) -> None:
    users.app.faults.fail(503, times=1)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        client.send_query_result(query_result())
    assert is_retryable(caught.value)
    assert users.app.deliveries() == []
    assert client.send_query_result(query_result()) == 201


def test_answer_lost_after_recording_then_retry_counts_once(
    users: Running[UsersApp], client: UsersClient
) -> None:
    users.app.faults.fail(500, times=1, after=True)  # Users stored it, but the 2xx never arrived
    with pytest.raises(httpx.HTTPStatusError) as caught:
        client.send_query_result(query_result())
    assert is_retryable(caught.value)
    assert client.send_query_result(query_result()) == 409
    assert len(users.app.deliveries()) == 1


def test_hang_after_recording_times_out_then_retry_counts_once(users: Running[UsersApp]) -> None:
    users.app.faults.hang(times=1, after=True)
    with httpx.Client(timeout=1) as http:
        client = UsersClient(http, users.url, TOKEN)
        with pytest.raises(httpx.ReadTimeout) as caught:
            client.send_query_result(query_result())
        assert is_retryable(caught.value)
        assert client.send_query_result(query_result()) == 409
    assert len(users.app.deliveries()) == 1


def test_runs_as_a_process_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ragcore_dev.standins.users", "--port", str(port), "--token", "t"],
        env=deployable_env(),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url)
        with httpx.Client(timeout=2) as http:
            assert UsersClient(http, url, "t").send_query_result(query_result()) == 201
        assert len(httpx.get(url + "/_control/deliveries").json()["deliveries"]) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


def test_an_outage_refuses_every_request_for_its_duration_and_the_control_api_still_answers(
    users: Running[UsersApp], client: UsersClient
) -> None:
    reply = httpx.post(f"{users.url}/_control/faults", json={"outage_seconds": 1, "status": 503})
    assert reply.json()["outage_status"] == 503
    for message_id in ("m-1", "m-2", "m-3"):
        with pytest.raises(httpx.HTTPStatusError) as caught:
            client.send_query_result(query_result(message_id))
        assert caught.value.response.status_code == 503
    assert users.app.deliveries() == []
    time.sleep(1.1)
    assert client.send_query_result(query_result("m-1")) == 201  # over by itself
    users.app.faults.outage(503)  # until cleared
    with pytest.raises(httpx.HTTPStatusError):
        client.send_query_result(query_result("m-2"))
    users.app.faults.clear()
    assert client.send_query_result(query_result("m-2")) == 201
