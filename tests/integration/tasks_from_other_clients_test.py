"""Tasks that other clients send (the Celery CLI, a bare Celery app, as Flower does) against real
workers: revoked by id through the API, sent or not yet, they never run, across a worker restart
too; the ones that run reach the ledger."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ragcore.broker import revocation_feed
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore_dev.processes import wait_until
from tests.support.stack import ADMIN_KEY, Stack, ledger_record, send_from_another_client

CANARY = CANARIES[Queue.USER].name


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    stack.start_api()
    with stack.api(ADMIN_KEY) as client:
        yield client


def _celery_cli(stack: Stack, *args: str) -> str:
    """`celery -b BROKER call ...` as an operator types it; the id it prints."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-b", stack.redis.url, "call", *args],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _send_from_a_bare_app(stack: Stack, task_id: str, **kwargs: Any) -> None:
    send_from_another_client(stack, CANARY, Queue.USER.value, task_id, **kwargs)


def _queued_ids(stack: Stack) -> list[str]:
    return [
        json.loads(raw)["headers"]["id"]
        for raw in stack.redis_client().lrange(Queue.USER.value, 0, -1)
    ]


def _record(task_id: str) -> TaskRecord | None:
    with session_scope() as session:
        return session.get(TaskRecord, task_id)


def _discarded(task_id: str) -> TaskRecord:
    """The row once a worker discarded the task: REVOKED, never started, its name learnt from the
    message."""

    def reached() -> TaskRecord | None:
        record = _record(task_id)
        return (
            record
            if record is not None and record.name is not None and record.state == "REVOKED"
            else None
        )

    record = wait_until(reached, 30, f"a worker to discard {task_id}")
    assert (record.name, record.queue, record.started_at, record.revoked) == (
        CANARY,
        Queue.USER.value,
        None,
        True,
    )
    return record


def test_a_task_another_client_sent_reaches_the_ledger_and_status(
    stack: Stack, api: httpx.Client
) -> None:
    worker = stack.start_worker(Queue.USER, name="user-ledger")
    task_id = str(uuid.uuid4())
    _send_from_a_bare_app(stack, task_id, echo="from elsewhere")
    stack.wait_acknowledged(task_id)
    # at once: the worker writes the row and its end before it acknowledges the message
    record = _record(task_id)
    assert record is not None
    assert (record.state, record.name, record.queue, record.worker, record.kwargs) == (
        "SUCCESS",
        CANARY,
        Queue.USER.value,
        "user-ledger@test",
        {"echo": "from elsewhere"},
    )
    assert record.result == stack.producer.AsyncResult(task_id).result
    stack.producer.AsyncResult(task_id).forget()  # Redis lost it: the ledger answers
    status = api.get(f"/api/v1/tasks/status/{task_id}").json()
    assert (status["status"], status["name"], status["result"]["echo"]) == (
        "SUCCESS",
        CANARY,
        "from elsewhere",
    )
    history = api.get("/api/v1/tasks/history", params={"name": CANARY}).json()["items"]
    assert task_id in [item["task_id"] for item in history]
    worker.stop()


def test_a_cli_task_with_a_countdown_revoked_through_the_api_never_runs_even_after_a_worker_restart(
    stack: Stack, api: httpx.Client
) -> None:
    first = stack.start_worker(Queue.USER, name="user-cli-first")
    task_id = _celery_cli(
        stack,
        CANARY,
        "--queue",
        Queue.USER.value,
        "--countdown",
        "12",
        "--kwargs",
        json.dumps({"echo": "must not run"}),
    )
    # the worker received it and holds it until its countdown ends
    ledger_record(task_id, "PENDING")
    response = api.post(f"/api/v1/tasks/revoke/{task_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "REVOKED"

    first.stop()
    # handed back unrun: only the durable revocation can stop it now
    assert task_id in _queued_ids(stack)
    # knows nothing of the broadcast
    second = stack.start_worker(Queue.USER, name="user-cli-second")
    wait_until(lambda: task_id not in _queued_ids(stack), 30, "the second worker to take the task")
    _discarded(task_id)
    assert f"Discarding revoked task: {CANARY}[{task_id}]" in second.logs()
    assert stack.producer.AsyncResult(task_id).state == "REVOKED"
    second.stop()


def test_an_id_revoked_before_it_was_sent_is_discarded_when_it_arrives(
    stack: Stack, api: httpx.Client
) -> None:
    worker = stack.start_worker(Queue.USER, name="user-unseen")
    task_id = str(uuid.uuid4())
    for _ in range(2):  # idempotent: the same answer and one row however often it is revoked
        response = api.post(f"/api/v1/tasks/revoke/{task_id}")
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["revoked"], body["terminated"], body["status"]) == (True, False, "REVOKED")
        assert body["detail"].startswith("not seen yet")
    record = _record(task_id)
    assert record is not None and (record.name, record.state, record.revoked) == (
        None,
        "REVOKED",
        True,
    )
    assert api.get(f"/api/v1/tasks/status/{task_id}").json()["status"] == "REVOKED"
    assert task_id in [item["task_id"] for item in api.get("/api/v1/tasks/history").json()["items"]]

    _send_from_a_bare_app(stack, task_id, echo="must not run")
    _discarded(task_id)
    assert f"Discarding revoked task: {CANARY}[{task_id}]" in worker.logs()
    # Once seen, revoking it again is today's answer for a task that was revoked while it waited.
    again = api.post(f"/api/v1/tasks/revoke/{task_id}", params={"terminate": True})
    assert (again.status_code, again.json()["terminated"]) == (200, False)
    worker.stop()


def test_an_id_revoked_before_it_was_sent_is_discarded_by_a_worker_started_later(
    stack: Stack, api: httpx.Client
) -> None:
    task_id = str(uuid.uuid4())
    # no worker runs: none heard it
    assert api.post(f"/api/v1/tasks/revoke/{task_id}").status_code == 202
    # nor can one read it from Redis: the ledger must carry it
    stack.redis_client().delete(revocation_feed.REVOKED_KEY)
    _send_from_a_bare_app(stack, task_id, echo="must not run")
    worker = stack.start_worker(Queue.USER, name="user-later")
    _discarded(task_id)
    assert f"Discarding revoked task: {CANARY}[{task_id}]" in worker.logs()
    worker.stop()


@pytest.mark.parametrize("task_id", ["has space", "-leading-dash", "x" * 65, "semi;colon"])
def test_revoking_a_malformed_id_is_422(api: httpx.Client, task_id: str) -> None:
    response = api.post(f"/api/v1/tasks/revoke/{task_id}")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid request: path.task_id")
    assert _record(task_id) is None
