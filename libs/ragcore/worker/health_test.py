"""The consuming-health verdict for every case a probe meets."""

from ragcore.worker.health import evaluate

NOW = 1_000_000.0


def _judge(**observed: object) -> bool:
    args = {
        "answered_ping": True,
        "depth": 3,
        "record": None,
        "window": 60.0,
        "now": NOW,
        **observed,
    }
    return evaluate(**args).healthy  # type: ignore[arg-type]


def test_a_worker_that_does_not_answer_a_ping_is_unhealthy_even_with_nothing_to_do() -> None:
    assert not _judge(answered_ping=False, depth=0)


def test_an_empty_queue_needs_no_dequeue() -> None:
    assert _judge(depth=0, record=None)


def test_waiting_tasks_and_a_recent_dequeue_is_healthy() -> None:
    assert _judge(record={"last_dequeue": NOW - 10, "active": 0, "concurrency": 2})


def test_waiting_tasks_and_no_dequeue_within_the_window_is_unhealthy() -> None:
    verdict = evaluate(
        answered_ping=True,
        depth=3,
        record={"last_dequeue": NOW - 61, "active": 0, "concurrency": 2},
        window=60.0,
        now=NOW,
    )
    assert not verdict.healthy and "dequeued nothing for 61s" in verdict.reason


def test_a_worker_that_never_dequeued_is_judged_from_its_start() -> None:
    assert _judge(
        record={"last_dequeue": None, "started_at": NOW - 5, "active": 0, "concurrency": 1}
    )
    assert not _judge(
        record={"last_dequeue": None, "started_at": NOW - 500, "active": 0, "concurrency": 1}
    )


def test_every_slot_busy_with_long_tasks_is_not_a_stall() -> None:
    assert _judge(record={"last_dequeue": NOW - 600, "active": 2, "concurrency": 2})
    assert not _judge(record={"last_dequeue": NOW - 600, "active": 1, "concurrency": 2})


def test_waiting_tasks_and_no_heartbeat_is_unhealthy() -> None:
    assert not _judge(record=None)
