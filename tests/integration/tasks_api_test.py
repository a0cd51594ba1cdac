"""The task-management API against real workers: status through a task's life, list, revoke
(persisted), terminate, workers, triggers, and the ledger answering once Redis has forgotten
everything."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ragcore.broker import revocation_feed
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts, dispatch, ledger
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore_dev.processes import Deployable, wait_until
from tests.support.stack import ADMIN_KEY, QUERY_KEY, SYNC_KEY, Stack

CLEANUP_WORKER = "cleanup-a@test"


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    stack.start_api()
    with stack.api(ADMIN_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def cleanup_worker(stack: Stack) -> Deployable:
    """One prefork process on the cleanup queue: a long canary keeps it busy, the next task
    waits."""
    return stack.start_worker(Queue.CLEANUP, "--concurrency=1", name="cleanup-a")


def _canary(stack: Stack, queue: Queue = Queue.CLEANUP, **kwargs: Any) -> str:
    return dispatch.send(stack.producer, CANARIES[queue], kwargs)


def _status(api: httpx.Client, task_id: str) -> dict[str, Any]:
    response = api.get(f"/api/v1/tasks/status/{task_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_status(
    api: httpx.Client, task_id: str, *states: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = _status(api, task_id)
        return body if body["status"] in states else None

    return wait_until(reached, timeout, f"task {task_id} to reach {states}")


def _queued_ids(stack: Stack, queue: Queue) -> list[str]:
    return [
        json.loads(raw)["headers"]["id"] for raw in stack.redis_client().lrange(queue.value, 0, -1)
    ]


def _ledger(task_id: str) -> TaskRecord:
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        return record


def test_status_follows_a_task_from_sent_through_progress_to_success(
    stack: Stack, api: httpx.Client, request: pytest.FixtureRequest
) -> None:
    task_id = _canary(stack, echo="life", sleep_seconds=1.5)
    sent = _status(api, task_id)
    assert (sent["status"], sent["name"], sent["queue"]) == (
        "PENDING",
        CANARIES[Queue.CLEANUP].name,
        "cleanup",
    )
    assert sent["sent_at"] and sent["started_at"] is None

    request.getfixturevalue("cleanup_worker")  # only now does anything consume the queue
    running = _wait_status(api, task_id, "PROGRESS")
    assert running["progress"]["total"] == 6 and 0 <= running["progress"]["done"] <= 6
    assert running["started_at"] and running["worker"] == CLEANUP_WORKER

    done = _wait_status(api, task_id, "SUCCESS")
    assert done["result"]["echo"] == "life"
    assert done["finished_at"] >= done["started_at"] >= done["sent_at"]
    assert _ledger(task_id).progress == {"done": 6, "total": 6}


def test_the_status_of_an_id_never_sent_is_404(api: httpx.Client) -> None:
    response = api.get("/api/v1/tasks/status/never-sent")
    assert response.status_code == 404 and "never-sent" in response.json()["detail"]


def test_a_failure_shows_its_traceback_to_admin_keys_only(
    stack: Stack, api: httpx.Client, cleanup_worker: Deployable
) -> None:
    task_id = _canary(stack, fail=True)
    admin_view = _wait_status(api, task_id, "FAILURE")
    assert admin_view["error"] == "PermanentTaskError: the canary was asked to fail"
    assert "PermanentTaskError" in admin_view["traceback"]
    # A query key reads no status; a sync key only the sync tasks'
    # (tests/integration/scopes_test.py).
    with stack.api(QUERY_KEY) as query, stack.api(SYNC_KEY) as sync:
        assert query.get(f"/api/v1/tasks/status/{task_id}").status_code == 403
        assert sync.get(f"/api/v1/tasks/status/{task_id}").status_code == 403


def test_list_shows_an_active_long_task(
    stack: Stack, api: httpx.Client, cleanup_worker: Deployable
) -> None:
    task_id = _canary(stack, sleep_seconds=5)
    _wait_status(api, task_id, "PROGRESS")
    listing = api.get("/api/v1/tasks/list").json()
    active = {t["task_id"]: t for t in listing["active"]}
    assert active[task_id]["name"] == CANARIES[Queue.CLEANUP].name
    assert (
        active[task_id]["worker"] == CLEANUP_WORKER
        and active[task_id]["kwargs"]["sleep_seconds"] == 5
    )
    assert CLEANUP_WORKER in listing["workers"]
    # free the worker for the next test
    api.post(f"/api/v1/tasks/revoke/{task_id}", params={"terminate": True})
    _wait_status(api, task_id, "REVOKED")


def test_terminate_stops_a_running_task_and_the_worker_goes_on(
    stack: Stack, api: httpx.Client, cleanup_worker: Deployable
) -> None:
    task_id = _canary(stack, sleep_seconds=8)
    _wait_status(api, task_id, "PROGRESS")
    [running] = [
        t for t in api.get("/api/v1/tasks/list").json()["active"] if t["task_id"] == task_id
    ]
    response = api.post(f"/api/v1/tasks/revoke/{task_id}", params={"terminate": True})
    assert response.status_code == 200, response.text
    assert response.json()["terminated"] is True

    wait_until(
        lambda: not _alive(running["worker_pid"]), 5, "the pool process running the task to end"
    )
    stopped = _wait_status(api, task_id, "REVOKED")
    assert stopped["revoked"] is True and _ledger(task_id).state == "REVOKED"
    # a fresh pool process took over
    after = _wait_status(api, _canary(stack, echo="after"), "SUCCESS")
    assert after["result"]["echo"] == "after" and after["result"]["pid"] != running["worker_pid"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_terminate_on_a_pool_that_cannot_is_409_and_changes_nothing(
    stack: Stack, api: httpx.Client
) -> None:
    worker = stack.start_worker(
        Queue.NOTIFICATIONS, "--pool=threads", "--concurrency=1", name="notifications-threads"
    )
    task_id = _canary(stack, Queue.NOTIFICATIONS, sleep_seconds=2)
    _wait_status(api, task_id, "PROGRESS")
    response = api.post(f"/api/v1/tasks/revoke/{task_id}", params={"terminate": True})
    assert response.status_code == 409
    assert "cannot terminate a running task" in response.json()["detail"]
    done = _wait_status(api, task_id, "SUCCESS")
    assert done["revoked"] is False
    worker.stop()


def test_a_revoked_queued_task_never_runs_even_after_a_worker_restart(
    stack: Stack, api: httpx.Client
) -> None:
    first = stack.start_worker(Queue.USER, "--concurrency=1", name="user-first")
    busy = _canary(stack, Queue.USER, sleep_seconds=2)
    _wait_status(api, busy, "PROGRESS")
    target = _canary(stack, Queue.USER, echo="must not run")
    assert _queued_ids(stack, Queue.USER) == [target]  # waiting behind the busy one

    response = api.post(f"/api/v1/tasks/revoke/{target}")
    assert response.status_code == 200 and response.json()["status"] == "REVOKED"
    first.stop()
    assert target in _queued_ids(stack, Queue.USER)  # still there for the next worker

    second = stack.start_worker(Queue.USER, name="user-second")  # knows nothing of the broadcast
    after = _wait_status(api, _canary(stack, Queue.USER, echo="after"), "SUCCESS")
    assert after["worker"] == "user-second@test"
    assert _queued_ids(stack, Queue.USER) == []  # the second worker took the revoked one...
    record = _ledger(target)
    assert (record.state, record.started_at) == ("REVOKED", None)  # ...and discarded it unrun
    assert "Discarding revoked task" in second.logs()
    second.stop()


def test_a_worker_that_missed_the_revoke_broadcast_learns_it_from_the_feed(
    stack: Stack, api: httpx.Client
) -> None:
    worker = stack.start_worker(
        Queue.USER, "--concurrency=1", name="user-feed", worker_heartbeat_seconds="0.3"
    )
    busy = _canary(stack, Queue.USER, sleep_seconds=3)
    _wait_status(api, busy, "PROGRESS")
    target = _canary(stack, Queue.USER, echo="must not run")
    # What the revoke endpoint does, minus the broadcast (as if this worker was disconnected then).
    with session_scope() as session:
        assert ledger.revoke(session, target) == "REVOKED"
    revocation_feed.publish_revocation(stack.redis_client(), target)

    _wait_status(api, busy, "SUCCESS")
    wait_until(
        lambda: _queued_ids(stack, Queue.USER) == [], 30, "the worker to take the revoked task"
    )
    record = _ledger(target)
    assert (record.state, record.started_at) == ("REVOKED", None)
    assert (
        "revoked through the feed" in worker.logs() and "Discarding revoked task" in worker.logs()
    )
    worker.stop()


def test_triggers_send_their_tasks_and_answer_202(
    stack: Stack, api: httpx.Client, cleanup_worker: Deployable
) -> None:
    expected = {
        "cleanup-cache": contracts.CLEANUP_OLD_CACHE,
        "reset-daily-limits": contracts.RESET_ALL_DAILY_LIMITS,
        "send-statistics": contracts.SEND_USAGE_STATISTICS,
    }
    sent = {}
    for path, contract in expected.items():
        response = api.post(f"/api/v1/tasks/trigger/{path}")
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["name"] == contract.name
        sent[path] = body["task_id"]
        assert _ledger(body["task_id"]).queue == contract.queue.value
    assert _wait_status(api, sent["cleanup-cache"], "SUCCESS", "FAILURE")["status"] == "SUCCESS"
    for path in ("reset-daily-limits", "send-statistics"):  # no worker consumes these queues now
        assert api.post(f"/api/v1/tasks/revoke/{sent[path]}").status_code == 200


def test_workers_lists_all_four_with_their_queues(
    stack: Stack, api: httpx.Client, cleanup_worker: Deployable
) -> None:
    started = [
        stack.start_worker(q, name=f"{q.value}-w")
        for q in (Queue.SYNC, Queue.NOTIFICATIONS, Queue.USER)
    ]
    body = api.get("/api/v1/tasks/workers").json()
    assert body["status"] == "success" and body["total_workers"] == len(body["workers"])
    by_name = {w["name"]: w for w in body["workers"]}
    hostnames = {
        Queue.SYNC: "sync-w@test",
        Queue.NOTIFICATIONS: "notifications-w@test",
        Queue.USER: "user-w@test",
        Queue.CLEANUP: CLEANUP_WORKER,
    }
    for queue, hostname in hostnames.items():
        assert by_name[hostname]["queues"] == [queue.value]
        assert CANARIES[queue].name in by_name[hostname]["registered_tasks"]
        assert "pool" in by_name[hostname]["stats"]
    queues = {q["name"]: q for q in api.get("/api/v1/tasks/queues").json()["queues"]}
    assert all(queues[q.value]["consumers"] == 1 and not queues[q.value]["flagged"] for q in Queue)
    for worker in started:
        worker.stop()


def test_the_ledger_answers_status_and_history_after_redis_is_flushed(
    stack: Stack, api: httpx.Client, cleanup_worker: Deployable
) -> None:
    task_ids = [_canary(stack, echo=f"kept {n}") for n in range(3)]
    for task_id in task_ids:
        stack.wait_acknowledged(task_id)
    # at once: the ledger holds each end before its message is acknowledged
    stack.redis_client().flushall()

    for n, task_id in enumerate(task_ids):
        kept = _status(api, task_id)
        assert (kept["status"], kept["result"]["echo"], kept["worker"]) == (
            "SUCCESS",
            f"kept {n}",
            CLEANUP_WORKER,
        )
    pages, cursor = [], None
    while True:
        params: dict[str, str | int] = {
            "name": CANARIES[Queue.CLEANUP].name,
            "status": "SUCCESS",
            "limit": 2,
        }
        if cursor:
            params["cursor"] = cursor
        page = api.get("/api/v1/tasks/history", params=params).json()
        pages.append([item["task_id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    listed = [task_id for page in pages for task_id in page]
    assert listed[:3] == list(reversed(task_ids)) and len(listed) == len(set(listed))
    assert all(len(page) <= 2 for page in pages) and len(pages) >= 2
    assert api.get("/api/v1/tasks/history", params={"cursor": "forged"}).status_code == 422


def test_a_trigger_with_the_broker_down_is_503_and_leaves_no_task_in_the_ledger(
    stack: Stack, api: httpx.Client
) -> None:
    def recorded() -> int:
        with session_scope() as session:
            return (
                session.query(TaskRecord)
                .filter(TaskRecord.name == contracts.CLEANUP_OLD_CACHE.name)
                .count()
            )

    before = recorded()
    stack.redis.stop()
    try:
        response = api.post("/api/v1/tasks/trigger/cleanup-cache")
    finally:
        stack.redis.start()
    assert response.status_code == 503 and "unreachable" in response.json()["detail"]
    assert recorded() == before  # never sent, so never shown as waiting
    # The broker is back: the same API process publishes again.
    again = wait_until(
        lambda: (r := api.post("/api/v1/tasks/trigger/cleanup-cache")).status_code == 202 and r,
        30,
        "a trigger",
    )
    assert (
        recorded() == before + 1
        and _ledger(again.json()["task_id"]).name == contracts.CLEANUP_OLD_CACHE.name
    )
