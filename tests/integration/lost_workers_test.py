"""Nothing a lost worker held waits for the visibility timeout (issue 25, point 4), another
client's task neither, and a live worker is never taken for lost: real worker processes started
from their entrypoints, a real Redis, with faults injected into one worker process through its
`sitecustomize` (a wedged consumer loop, a lagging clock). Nor does what a worker back under its own
name no longer holds (issue 25, point 5: Beat's reconciler takes it back).

Heartbeats here come every second and a worker is lost after 6 s without one; the visibility
timeout stays at its default (2 h), so anything that waited for it would fail these tests.
"""

from __future__ import annotations

import signal
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragcore.broker import held
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore.worker import recovery
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.users import start_users
from tests.support.stack import Stack, ledger_record, running_stack, send_from_another_client

LOST_AFTER = 6


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(
        worker_heartbeat_seconds="1", worker_lost_after_seconds=str(LOST_AFTER)
    ) as running:
        yield running


def _fault(tmp_path: Path, code: str) -> Path:
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(code))
    return tmp_path


def _held_by(stack: Stack, hostname: str, task_id: str) -> None:
    wait_until(
        lambda: task_id in recovery.reserved_by(stack.redis_client(), hostname),
        30,
        f"{hostname} to hold {task_id}",
    )


def test_a_countdown_retry_held_by_a_killed_worker_runs_on_its_replacement_at_its_time(
    stack: Stack,
) -> None:
    worker = stack.start_worker(Queue.USER, name="scheduled")
    # A retry is a message with an ETA, held in the worker's timer until then (and unacknowledged).
    task_id = dispatch.send(stack.producer, CANARIES[Queue.USER], {"echo": "later"}, countdown=15)
    _held_by(stack, "scheduled@test", task_id)
    worker.signal(signal.SIGKILL)  # the whole process group: nothing is handed back
    worker.kill()
    killed = time.monotonic()
    replacement = stack.start_worker(Queue.USER, name="scheduled-replacement")

    assert stack.producer.AsyncResult(task_id).get(timeout=90)["echo"] == "later"
    healed = time.monotonic() - killed
    assert ledger_record(task_id, "SUCCESS").worker == "scheduled-replacement@test"
    assert "worker scheduled@test lost" in replacement.logs()
    print(f"countdown retry of a killed worker ran {healed:.1f}s after the kill")
    replacement.stop()


def test_a_task_another_client_sent_running_on_a_killed_worker_runs_on_its_replacement(
    stack: Stack,
) -> None:
    worker = stack.start_worker(Queue.USER, name="foreign")
    task_id = str(uuid.uuid4())  # no ledger row, no stamp: its worker records it
    canary = CANARIES[Queue.USER].name
    send_from_another_client(
        stack, canary, Queue.USER.value, task_id, echo="foreign", sleep_seconds=4
    )
    assert ledger_record(task_id, "STARTED", timeout=30).worker == "foreign@test"
    worker.signal(signal.SIGKILL)  # mid-run, the whole process group
    worker.kill()
    replacement = stack.start_worker(Queue.USER, name="foreign-replacement")

    assert stack.producer.AsyncResult(task_id).get(timeout=90)["echo"] == "foreign"
    assert ledger_record(task_id, "SUCCESS").worker == "foreign-replacement@test"
    assert "worker foreign@test lost" in replacement.logs()
    replacement.stop()


WEDGE = """
    import time

    from celery import signals


    @signals.task_received.connect(weak=False)
    def _wedge(request, **_):
        # Something on the consumer's loop blocks (a hook, a call without a timeout); the
        # heartbeat thread would carry on.
        if (request.kwargs or {}).get("echo") == "wedge":
            print("wedging the consumer loop", flush=True)
            time.sleep(3600)
"""


def test_a_worker_whose_consumer_loop_is_wedged_is_claimed_and_its_tasks_run_elsewhere(
    stack: Stack, tmp_path: Path
) -> None:
    canary = CANARIES[Queue.CLEANUP]
    wedged = stack.start_faulty_worker(Queue.CLEANUP, _fault(tmp_path, WEDGE), name="wedged")
    task_id = dispatch.send(stack.producer, canary, {"echo": "held"}, countdown=10)
    _held_by(stack, "wedged@test", task_id)
    dispatch.send(stack.producer, canary, {"echo": "wedge"})
    wait_until(lambda: "wedging the consumer loop" in wedged.logs(), 30, "the loop to wedge")
    wedged_at = time.monotonic()
    peer = stack.start_worker(Queue.CLEANUP, name="peer")

    assert stack.producer.AsyncResult(task_id).get(timeout=90)["echo"] == "held"
    healed = time.monotonic() - wedged_at
    assert ledger_record(task_id, "SUCCESS").worker == "peer@test"
    assert "worker wedged@test lost" in peer.logs()
    assert wedged.running  # alive all along: only its loop stopped
    assert "the consumer's loop has not run" in wedged.logs()
    print(f"tasks of a wedged worker ran elsewhere {healed:.1f}s after the wedge")
    wedged.kill()
    peer.stop()


LAG = """
    import time

    _real = time.time
    # This machine's clock lags the others' (and the Redis server's) by 20 s.
    time.time = lambda: _real() - 20.0
"""


def test_a_worker_whose_clock_lags_its_peers_is_never_taken_for_lost(
    stack: Stack, tmp_path: Path
) -> None:
    lagging = stack.start_faulty_worker(Queue.NOTIFICATIONS, _fault(tmp_path, LAG), name="lagging")
    # Held in the lagging worker's timer the whole time the peer beats and looks for lost workers
    # (its ETA fires late there: the lagging clock).
    task_id = dispatch.send(
        stack.producer, CANARIES[Queue.NOTIFICATIONS], {"echo": "mine"}, countdown=5
    )
    _held_by(stack, "lagging@test", task_id)
    peer = stack.start_worker(Queue.NOTIFICATIONS, name="punctual")

    assert stack.producer.AsyncResult(task_id).get(timeout=90)["echo"] == "mine"
    # Taken for lost, its task would have been re-queued and run by the peer at its time.
    assert ledger_record(task_id, "SUCCESS").worker == "lagging@test"
    assert "lost" not in peer.logs()
    assert lagging.running
    lagging.stop()
    peer.stop()


def test_reserved_messages_whose_note_was_lost_run_when_their_worker_returns_under_its_name(
    stack: Stack,
) -> None:
    with start_users() as users:
        beat = stack.start("services.beat.main", beat_schedule="{}", reconcile_seconds="1")
        one_process = {"users_url": users.url, "worker_concurrency": '{"notifications": 1}'}
        worker = stack.start_worker(Queue.NOTIFICATIONS, name="orphans", **one_process)
        # One task runs; the reports wait behind it, reserved (prefetch 4), in `unacked`.
        running = dispatch.send(stack.producer, CANARIES[Queue.NOTIFICATIONS], {"sleep_seconds": 8})
        message_ids = [f"msg-{uuid.uuid4()}" for _ in range(3)]
        reports = [
            dispatch.send(stack.producer, contracts.SEND_QUERY_RESULT, _query_result(message_id))
            for message_id in message_ids
        ]
        for task_id in [running, *reports]:
            _held_by(stack, "orphans@test", task_id)
        worker.signal(signal.SIGKILL)
        worker.kill()
        killed = time.monotonic()
        # The fault a failover makes: the note of what it held is gone (written to the primary
        # that died, never to the replica), the `unacked` entries are not. Its next life, under
        # the same name, re-queues what the ledger says it had started, and only that.
        stack.redis_client().delete(held.reserved_note_key("orphans@test"))
        stack.start_worker(
            Queue.NOTIFICATIONS,
            name="orphans",
            users_url=users.url,
            worker_concurrency='{"notifications": 2}',  # the canary runs again beside the reports
        )

        def delivered() -> Counter[str]:
            return Counter(d["idempotency_key"] for d in users.app.deliveries("query-results"))

        # kombu's visibility timeout (2 h) would be the bound without the reconciler
        wait_until(lambda: all(delivered()[m] for m in message_ids), 60, "the reports")
        healed = time.monotonic() - killed
        assert [delivered()[m] for m in message_ids] == [1, 1, 1]
        assert {ledger_record(r, "SUCCESS").reconcile_reason for r in reports} == {
            "orphaned_unacked"
        }
        assert "orphaned_unacked" in beat.logs()
        print(f"reserved reports whose note was lost arrived {healed:.1f}s after the kill")
        beat.stop()


def _query_result(message_id: str) -> dict[str, object]:
    return {
        "user_id": "user-1",
        "conversation_id": "conv-1",
        "message_id": message_id,
        "query": "q",
        "answer": "a",
        "sources": [],
        "tokens_used": 1,
        "processing_time_ms": 1.0,
    }
