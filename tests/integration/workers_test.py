"""Each worker, started from its image's entrypoint, consumes its own queue and only it, and after a
hard kill its next life re-queues what its previous one held."""

import re
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore.worker import recovery
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.users import start_users
from tests.support.stack import Stack


@pytest.mark.parametrize("queue", list(Queue))
def test_worker_runs_a_task_sent_by_name_and_the_api_reports_it(stack: Stack, queue: Queue) -> None:
    if stack.api_url is None:
        stack.start_api()
    worker = stack.start_worker(queue)
    task_id = dispatch.send(stack.producer, CANARIES[queue], {"echo": f"hello {queue.value}"})
    with stack.api() as api:

        def finished() -> dict[str, Any] | None:
            body = api.get(f"/api/v1/tasks/status/{task_id}").json()
            return body if body["status"] == "SUCCESS" else None

        body = wait_until(finished, 30, f"canary on {queue.value}")
    assert body["result"]["echo"] == f"hello {queue.value}"
    assert body["result"]["queue"] == queue.value
    assert body["name"] == CANARIES[queue].name and body["queue"] == queue.value
    worker.stop()


def test_a_task_waits_for_its_own_queues_worker(stack: Stack) -> None:
    sync_worker = stack.start_worker(Queue.SYNC, name="sync-only")
    task_id = dispatch.send(stack.producer, CANARIES[Queue.USER])
    sync_task_id = dispatch.send(stack.producer, CANARIES[Queue.SYNC])
    stack.producer.AsyncResult(sync_task_id).get(timeout=30)  # the sync worker is consuming...
    assert stack.producer.AsyncResult(task_id).state == "PENDING"  # ...but not the user queue
    assert stack.redis_client().llen(Queue.USER.value) == 1

    user_worker = stack.start_worker(Queue.USER, name="user-late")
    result = stack.producer.AsyncResult(task_id).get(timeout=30)
    assert result["queue"] == "user"
    sync_worker.stop()
    user_worker.stop()


def test_a_worker_killed_while_holding_deliveries_hands_them_all_over_when_it_restarts(
    stack: Stack,
) -> None:
    with start_users() as users:
        # each delivery takes a while: the worker holds the rest reserved
        users.app.faults.set_delay(0.4)
        settings = {"users_url": users.url, "http_timeout_seconds": "5"}
        worker = stack.start_worker(Queue.NOTIFICATIONS, "--concurrency=1", name="held", **settings)
        message_ids = [str(uuid.uuid4()) for _ in range(6)]
        for message_id in message_ids:
            dispatch.send(
                stack.producer,
                contracts.SEND_QUERY_RESULT,
                {
                    "user_id": "u",
                    "conversation_id": "c",
                    "message_id": message_id,
                    "query": "q",
                    "answer": "a",
                    "sources": [],
                    "tokens_used": 1,
                    "processing_time_ms": 1.0,
                },
            )
        client = stack.redis_client()
        wait_until(
            lambda: len(recovery.reserved_by(client, "held@test")) >= 4,
            30,
            "the worker to hold several deliveries",
        )
        # the whole process group: no warm shutdown hands anything back
        worker.signal(signal.SIGKILL)
        worker.kill()
        users.app.faults.clear()

        # Unacknowledged, they would wait for the visibility timeout (hours); the next life
        # re-queues them.
        stack.start_worker(Queue.NOTIFICATIONS, "--concurrency=1", name="held", **settings)

        def delivered() -> set[str]:
            return {d["idempotency_key"] for d in users.app.deliveries("query-results")}

        wait_until(lambda: delivered() == set(message_ids), 30, "every delivery after the restart")
        # each once (one sent before the kill may be refused as a duplicate)
        assert users.app.count("query-results") == 6


def _keda_lists(queue: Queue) -> list[str]:
    """The Redis lists the queue's KEDA ScaledObject scales on (read as text: PyYAML is no
    dependency of ours, and deploy/images/check_manifests.py checks the file's structure)."""
    documents = Path("deploy/k8s/keda.yaml").read_text().split("\n---\n")
    (scaled,) = (
        d for d in documents if re.search(rf"^  name: ragcore-worker-{queue.value}$", d, re.M)
    )
    return re.findall(r"^\s+listName: (\S+)", scaled, re.M)


def test_keda_counts_a_running_task_while_the_waiting_list_is_empty(stack: Stack) -> None:
    worker = stack.start_worker(Queue.CLEANUP, name="busy")
    client = stack.redis_client()
    lists = _keda_lists(Queue.CLEANUP)
    task_id = dispatch.send(stack.producer, CANARIES[Queue.CLEANUP], {"sleep_seconds": 6})
    wait_until(
        lambda: stack.producer.AsyncResult(task_id).state in ("STARTED", "PROGRESS"),
        30,
        "the canary to run",
    )
    # nothing waits: the waiting list alone would read idle
    assert client.llen(Queue.CLEANUP.value) == 0
    wait_until(
        lambda: sum(client.llen(name) for name in lists) > 0,
        5,
        "KEDA's lists to count the running task",
    )
    stack.producer.AsyncResult(task_id).get(timeout=30)
    wait_until(
        lambda: sum(client.llen(name) for name in lists) == 0,
        5,
        "the count to fall once it finished",
    )
    worker.stop()
