"""The worker image's liveness probe (`worker --healthcheck`) proves consumption, and deployables
refuse to start on a broker that may evict queued tasks."""

from __future__ import annotations

import subprocess
import sys

from ragcore.tasks import dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore_dev.processes import free_port, wait_until
from tests.support.stack import Stack

HOSTNAME = "cleanup-health@test"


def _probe(stack: Stack, hostname: str = HOSTNAME) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, with a short dequeue window."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cleanup.worker",
            "--healthcheck",
            f"--hostname={hostname}",
        ],
        env=stack.env(worker_dequeue_window_seconds="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_probe_passes_while_consuming_and_fails_when_the_worker_stops_taking_its_queue(
    stack: Stack,
) -> None:
    worker = stack.start_worker(
        Queue.CLEANUP, name="cleanup-health", worker_heartbeat_seconds="0.5"
    )
    wait_until(lambda: _probe(stack).returncode == 0, 30, "a healthy probe")

    # Alive and answering pings, but no longer consuming: the stall a plain ping cannot see.
    stack.producer.control.cancel_consumer(Queue.CLEANUP.value, destination=[HOSTNAME], reply=True)
    dispatch.send(stack.producer, CANARIES[Queue.CLEANUP])
    stalled = wait_until(
        lambda: (p := _probe(stack)).returncode == 1 and p, 30, "an unhealthy probe"
    )
    assert "UNHEALTHY" in stalled.stderr and "dequeued nothing" in stalled.stderr

    stack.producer.control.add_consumer(Queue.CLEANUP.value, destination=[HOSTNAME], reply=True)
    wait_until(
        lambda: _probe(stack).returncode == 0, 30, "the probe to pass again once it consumes"
    )
    assert stack.redis_client().llen(Queue.CLEANUP.value) == 0

    worker.stop()
    gone = _probe(stack)
    assert gone.returncode == 1 and "did not answer a ping" in gone.stderr


def test_worker_and_api_refuse_to_start_on_a_broker_that_evicts_keys(stack: Stack) -> None:
    client = stack.redis_client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        worker = stack.start("services.user.worker", "--hostname=user-refused@test")
        api = stack.start("api.main", api_port=str(free_port()))
        for deployable in (worker, api):
            # B023: the lambda is polled to the end before the loop moves on to the next deployable.
            wait_until(lambda: not deployable.running, 60, f"{deployable.module} to exit")  # noqa: B023
            assert "refuses to start" in deployable.logs() and "noeviction" in deployable.logs()
    finally:
        client.config_set("maxmemory-policy", "noeviction")
