"""Each worker image, run by pytest-celery against a Redis container, consumes its own queue and
only it, runs its canary, leaves the other queues' tasks alone, and survives a broker restart."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from pytest_celery import RESULT_TIMEOUT, CeleryTestSetup

from ragcore.tasks.contracts import BY_NAME, CANARIES, Queue
from ragcore_dev.processes import wait_until
from tests.images.worker_vendor import RagcoreTestWorker

#: A worker's reconnection backs off for a few seconds; a loaded machine adds to it.
RECONNECT_SECONDS = 120


def _consumed(app: Celery, worker: RagcoreTestWorker) -> list[str]:
    """The queues the worker reports it consumes (it answers once its mailbox listens)."""

    def answer() -> list[str] | None:
        replies = app.control.inspect([worker.hostname()], timeout=2).active_queues() or {}
        queues = replies.get(worker.hostname())
        return None if queues is None else sorted(q["name"] for q in queues)

    return wait_until(answer, RESULT_TIMEOUT, f"{worker.hostname()} to answer active_queues")


def _canary(app: Celery, queue: Queue, echo: str) -> AsyncResult:
    return app.send_task(CANARIES[queue].name, kwargs={"echo": echo})


def _ran_on(result: AsyncResult, worker: RagcoreTestWorker, timeout: float) -> dict[str, Any]:
    answer: dict[str, Any] = result.get(timeout=timeout)
    assert result.worker == worker.hostname()  # result_extended: the node that ran it
    return answer


def test_the_worker_image_consumes_its_own_queue_and_only_it(celery_setup: CeleryTestSetup) -> None:
    app, worker = celery_setup.app, celery_setup.worker
    queue = Queue(worker.worker_queue)
    assert _consumed(app, worker) == [queue.value]

    registered = set(
        app.control.inspect([worker.hostname()], timeout=5).registered()[worker.hostname()]
    )
    ours = {c.name for c in BY_NAME.values() if c.queue is queue}
    theirs = {c.name for c in BY_NAME.values() if c.queue is not queue}
    assert ours <= registered and not theirs & registered  # its image holds no other service

    # The other queues' canaries go first; the worker, free meanwhile, leaves each where it is.
    others = {q: _canary(app, q, f"not for {queue.value}") for q in Queue if q is not queue}
    own = _canary(app, queue, f"image-{queue.value}")
    assert _ran_on(own, worker, RESULT_TIMEOUT)["queue"] == queue.value
    worker.assert_log_exists(own.id)  # received and run (the task lifecycle is logged)
    broker = celery_setup.broker.container.client
    for other, result in others.items():
        assert result.state == "PENDING"
        assert broker.llen(other.value) == 1, f"the {other.value} queue lost its task"
        worker.assert_log_does_not_exist(result.id)


def test_the_worker_image_survives_a_broker_restart_and_consumes_again(
    celery_setup: CeleryTestSetup,
) -> None:
    app, worker = celery_setup.app, celery_setup.worker
    queue = Queue(worker.worker_queue)
    _ran_on(_canary(app, queue, "before"), worker, RESULT_TIMEOUT)
    started_at = worker.container.attrs["State"]["StartedAt"]

    celery_setup.broker.restart()  # the container: Redis stops, and starts empty
    restarted = time.monotonic()
    worker.assert_log_exists("Connection to broker lost", timeout=RECONNECT_SECONDS)
    answer = _ran_on(_canary(app, queue, "after"), worker, RECONNECT_SECONDS)
    healed = time.monotonic() - restarted  # Redis is up again from `restarted` on
    print(f"{worker.hostname()}: consuming again {healed:.1f} s after the broker restart")
    assert answer == {**answer, "echo": "after", "queue": queue.value}

    worker.container.reload()  # the same container, never restarted: the worker process survived
    assert worker.container.status == "running"
    assert worker.container.attrs["State"]["StartedAt"] == started_at
    assert worker.container.attrs["RestartCount"] == 0
    assert _consumed(app, worker) == [queue.value]
