"""Each worker, started from its image's entrypoint, consumes its own queue and only it."""

import pytest

from ragcore import dispatch
from ragcore.contracts import CANARIES, Queue
from tests.support.processes import wait_until
from tests.support.stack import Stack


@pytest.mark.parametrize("queue", list(Queue))
def test_worker_runs_a_task_sent_by_name_and_the_api_reports_it(stack: Stack, queue: Queue) -> None:
    if stack.api_url is None:
        stack.start_api()
    worker = stack.start_worker(queue)
    task_id = dispatch.send(stack.producer, CANARIES[queue], {"echo": f"hello {queue.value}"})
    with stack.api() as api:
        def finished() -> dict | None:
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
