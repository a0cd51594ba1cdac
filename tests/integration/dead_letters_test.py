"""Poison never stops a worker: a message that is not JSON (or not a message), one that names no
task and one whose arguments fail the contract, all waiting ahead of real deliveries, become dead
letters (the bad arguments also end FAILURE in the ledger); the deliveries behind them reach Users
and the worker goes on. Before: the worker logged `Unrecoverable error: JSONDecodeError` and exited
with status 0, and nothing behind the bad message was consumed."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ragcore.tasks import contracts, dispatch
from ragcore_dev.processes import Deployable, wait_until
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from tests.support.stack import Stack, ledger_record

QUEUE = contracts.Queue.NOTIFICATIONS
NOT_JSON = b"\x00{not json"
NOT_A_MESSAGE = b'{"hello": "world"}'


@pytest.fixture(scope="module")
def users() -> Iterator[Running[UsersApp]]:
    with start_users() as running:
        yield running


def _query_result() -> dict[str, Any]:
    return {
        "user_id": "user-1",
        "conversation_id": "conv-1",
        "message_id": f"msg-{uuid.uuid4()}",
        "query": "q",
        "answer": "a",
        "sources": [],
        "tokens_used": 1,
        "processing_time_ms": 1.0,
    }


def _task_message(name: str, task_id: str, kwargs: dict[str, Any]) -> bytes:
    """A Celery (protocol 2) message as another client would push it onto the queue's list."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = base64.b64encode(json.dumps([[], kwargs, embed]).encode()).decode()
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": name, "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": QUEUE.value},
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def _poison_then_deliveries(stack: Stack) -> tuple[str, list[str]]:
    """Poison first (a buggy client's raw pushes), then three real deliveries; the bad arguments'
    task id and the deliveries' message ids."""
    bad_task = str(uuid.uuid4())
    broker = stack.redis_client()
    broker.lpush(QUEUE.value, NOT_JSON)
    broker.lpush(QUEUE.value, NOT_A_MESSAGE)
    broker.lpush(QUEUE.value, _task_message("no_such_task", str(uuid.uuid4()), {}))
    bad = _task_message(contracts.SEND_QUERY_RESULT.name, bad_task, {"user_id": 5})
    broker.lpush(QUEUE.value, bad)
    payloads = [_query_result() for _ in range(3)]
    for payload in payloads:
        dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, payload)
    return bad_task, [p["message_id"] for p in payloads]


def _letters(stack: Stack) -> list[dict[str, Any]]:
    with stack.api() as api:
        response = api.get("/api/v1/deadletters")
    assert response.status_code == 200, response.text
    letters: list[dict[str, Any]] = response.json()["dead_letters"]
    return letters


def test_poison_ahead_of_deliveries_becomes_dead_letters_and_the_worker_goes_on(
    stack: Stack, users: Running[UsersApp]
) -> None:
    stack.start_api()
    bad_task, message_ids = _poison_then_deliveries(stack)
    worker = stack.start_worker(QUEUE, users_url=users.url, http_timeout_seconds="3")

    def delivered() -> bool:
        keys = {d["idempotency_key"] for d in users.app.deliveries("query-results")}
        return set(message_ids) <= keys

    wait_until(delivered, 60, "the deliveries behind the poison")
    failed = ledger_record(bad_task, "FAILURE", timeout=30)
    assert failed.error is not None and "invalid arguments" in failed.error

    # the same poison again, to the running worker: counted on its row, the worker still consumes
    stack.redis_client().lpush(QUEUE.value, NOT_JSON)
    again = _query_result()
    dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, again)
    wait_until(
        lambda: any(
            d["idempotency_key"] == again["message_id"]
            for d in users.app.deliveries("query-results")
        ),
        60,
        "a delivery after the second poison",
    )
    assert worker.running

    letters = {(d["reason"], d["body"]): d for d in _letters(stack)}
    assert sorted(reason for reason, _ in letters) == [
        "invalid_arguments", "undecodable", "undecodable", "unknown_task",
    ]  # fmt: skip
    not_json = letters[("undecodable", NOT_JSON.decode())]
    assert not_json["count"] == 2 and not_json["queue"] == QUEUE.value
    assert "JSONDecodeError" in not_json["detail"]
    assert letters[("undecodable", NOT_A_MESSAGE.decode())]["count"] == 1
    [unknown] = [d for (reason, _), d in letters.items() if reason == "unknown_task"]
    assert unknown["task_name"] == "no_such_task" and "no_such_task" in unknown["detail"]
    [invalid] = [d for (reason, _), d in letters.items() if reason == "invalid_arguments"]
    assert (invalid["task_name"], invalid["task_id"]) == (
        contracts.SEND_QUERY_RESULT.name,
        bad_task,
    )
    with stack.api() as api:
        status = api.get(f"/api/v1/tasks/status/{bad_task}").json()
        metrics = api.get("/metrics").text
    assert status["status"] == "FAILURE" and "invalid arguments" in status["error"]
    for reason, letters_n, messages_n in (
        ("undecodable", 2, 3), ("unknown_task", 1, 1), ("invalid_arguments", 1, 1),
    ):  # fmt: skip
        labels = f'{{queue="{QUEUE.value}",reason="{reason}"}}'
        assert f"ragcore_dead_letters{labels} {letters_n}.0" in metrics
        assert f"ragcore_dead_letter_messages{labels} {messages_n}.0" in metrics
    _logged_once_each(worker, [d["id"] for d in letters.values()])
    with stack.api() as api:  # an operator discards one: gone from the list
        assert api.delete(f"/api/v1/deadletters/{unknown['id']}").status_code == 204
    assert unknown["id"] not in {d["id"] for d in _letters(stack)}


def _logged_once_each(worker: Deployable, letter_ids: list[int]) -> None:
    logs = worker.logs()
    assert "Unrecoverable error" not in logs
    for letter_id in letter_ids:
        assert len(re.findall(rf'"dead letter {letter_id} on ', logs)) == 1, logs[-4000:]
