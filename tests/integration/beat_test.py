"""Beat, started from its entrypoint on a compressed schedule (intervals of a few seconds), fires
each entry once, on time, onto its queue: alone, beside a second Beat, across restarts, and across
a broker outage that it rides out.

What Beat sent is read from the queues' Redis lists (no worker consumes them); each message's send
time is its absolute `expires` header minus the entry's `expires` option.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from ragcore.db import session_scope
from ragcore.db.models import Conversation, Message, TaskRecord
from ragcore.query.cache import HotCache, bump_data_version
from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, wait_until
from services.beat import schedule
from tests.support.stack import Stack, running_stack

PERIODIC = (
    "reset_all_daily_limits",
    "cleanup_old_cache",
    "cleanup_query_cache",
    "process_sync_queue",
    "send_usage_statistics",
)
EARLY = 0.25  # a send this much before its period is over would be a second, extra run


@dataclass(frozen=True)
class Sent:
    queue: str
    task: str
    task_id: str
    kwargs: dict[str, Any]
    at: datetime


def _sent(stack: Stack) -> list[Sent]:
    """Every message of a periodic entry that Beat put on the four queues, oldest first."""
    expires = {name: e["options"]["expires"] for name, e in schedule.build(get_settings()).items()}
    messages = []
    for queue in Queue:
        for raw in stack.redis_client().lrange(queue.value, 0, -1):
            message = json.loads(raw)
            headers = message["headers"]
            if headers["task"] not in expires:
                continue  # a report the relay published
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            at = datetime.fromisoformat(headers["expires"]) - timedelta(
                seconds=expires[headers["task"]]
            )
            messages.append(Sent(queue.value, headers["task"], headers["id"], kwargs, at))
    return sorted(messages, key=lambda m: m.at)


def _times(stack: Stack, task: str) -> list[datetime]:
    return [m.at for m in _sent(stack) if m.task == task]


def _gaps(times: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]


def _lock_acquired_at(beat: Deployable) -> datetime | None:
    for line in beat.logs().splitlines():
        if line.startswith("{") and json.loads(line).get("message") == "beat: Acquired lock":
            return datetime.fromisoformat(json.loads(line)["ts"])
    return None


def _start_beat(stack: Stack) -> Deployable:
    beat = stack.start("services.beat.main")
    wait_until(lambda: _leader_since(beat), 60, "beat to take the leader lock")
    return beat


def _leader_since(beat: Deployable) -> datetime | None:
    """When `beat` took the leader lock, None while it waits for it; an error once it exited."""
    acquired = _lock_acquired_at(beat)
    if acquired is None and not beat.running:
        raise RuntimeError(f"beat exited:\n{beat.logs()[-4000:]}")
    return acquired


def _wait_sends(stack: Stack, task: str, count: int, timeout: float = 60) -> list[datetime]:
    """The send times of `task` once there are at least `count`."""

    def enough() -> list[datetime] | None:
        times = _times(stack, task)
        return times if len(times) >= count else None

    return wait_until(enough, timeout, f"{count} sends of {task}")


def test_beat_fires_every_entry_onto_its_queue_with_an_expiry_and_records_it_in_the_ledger() -> (
    None
):
    with running_stack(beat_schedule=json.dumps({name: "2" for name in PERIODIC})) as stack:
        beat = _start_beat(stack)
        for name in PERIODIC:
            _wait_sends(stack, name, 2)
        beat.stop()

        sent = _sent(stack)
        with session_scope() as session:
            ledger = {r.task_id: r for r in session.scalars(select(TaskRecord))}
    assert {m.task for m in sent} == set(PERIODIC)
    for message in sent:
        task = contracts.contract(message.task)
        assert message.queue == task.queue.value, f"{message.task} went to {message.queue}"
        assert message.kwargs == task.validate({})  # e.g. cleanup_query_cache gets days=30
        record = ledger[message.task_id]  # Beat recorded what it sent
        assert (record.name, record.queue, record.state) == (task.name, message.queue, "PENDING")
        assert record.kwargs == message.kwargs
    for name in PERIODIC:
        assert all(gap >= 2 - EARLY for gap in _gaps([m.at for m in sent if m.task == name]))


def test_two_beats_running_together_fire_each_due_entry_once_and_the_second_takes_over() -> None:
    period = 2
    with running_stack(beat_schedule=json.dumps({name: str(period) for name in PERIODIC})) as stack:
        beats = [stack.start("services.beat.main"), stack.start("services.beat.main")]
        leader = wait_until(
            lambda: next((b for b in beats if _lock_acquired_at(b)), None), 60, "a leader"
        )
        standby = beats[1 - beats.index(leader)]
        for name in PERIODIC:
            _wait_sends(stack, name, 6)  # a window of 5+ periods, both Beats running
        assert standby.running and _lock_acquired_at(standby) is None  # it waits for the lock
        together = {name: _times(stack, name) for name in PERIODIC}

        leader.stop()
        wait_until(lambda: _leader_since(standby), 30, "the standby to take over")
        for name in PERIODIC:
            _wait_sends(stack, name, len(together[name]) + 3)
        standby.stop()
        after = {name: _times(stack, name) for name in PERIODIC}

    for name in PERIODIC:
        gaps = _gaps(together[name])
        # Once per period, never twice: the count over the window is what one Beat alone sends.
        assert all(period - EARLY <= gap <= period + 1.5 for gap in gaps), (name, gaps)
        elapsed = (together[name][-1] - together[name][0]).total_seconds()
        assert elapsed / (period + 1.5) + 1 <= len(together[name]) <= elapsed / (period - EARLY) + 1
        # The takeover neither repeats the leader's last run nor sends a burst of missed ones.
        assert all(gap >= period - EARLY for gap in _gaps(after[name])), (name, _gaps(after[name]))


def test_a_restarted_beat_neither_repeats_nor_drops_a_due_entry() -> None:
    period = 3
    with running_stack(beat_schedule=json.dumps({"cleanup_old_cache": str(period)})) as stack:
        first = _start_beat(stack)
        (t1,) = _wait_sends(stack, "cleanup_old_cache", 1)
        first.stop()

        # Restarted within the period: the stored last run holds; nothing is re-sent at start.
        second = _start_beat(stack)
        t2 = _wait_sends(stack, "cleanup_old_cache", 2)[1]
        started = _lock_acquired_at(second)
        second.stop()
        assert started is not None
        assert (t2 - t1).total_seconds() >= period - EARLY
        assert t2 <= max(t1 + timedelta(seconds=period), started) + timedelta(seconds=1.5)

        # Down across two due times: on restart the overdue entry is sent once, at once, then on
        # time.
        while datetime.now(UTC) < t2 + timedelta(seconds=2.5 * period):
            time.sleep(0.1)
        third = _start_beat(stack)
        t3, t4 = _wait_sends(stack, "cleanup_old_cache", 4)[2:4]
        restarted = _lock_acquired_at(third)
        third.stop()
        assert restarted is not None
        # not dropped: sent as soon as Beat is back
        assert abs((t3 - restarted).total_seconds()) <= 1.5
        # not replayed in a burst
        assert period - EARLY <= (t4 - t3).total_seconds() <= period + 1.5
        assert len(_times(stack, "cleanup_old_cache")) == 4


def test_a_stale_beat_run_is_discarded_by_the_worker_and_a_fresh_one_runs() -> None:
    with running_stack(beat_schedule=json.dumps({"cleanup_old_cache": "2"})) as stack:
        settings = get_settings()
        cache = HotCache(stack.redis_client(), settings.redis.cache_prefix, 3600)
        with session_scope() as session:
            bump_data_version(session)
        # any run of the task removes it
        cache.put("v0:stale", {"answer": "from an older data version"})

        beat = _start_beat(stack)
        _wait_sends(stack, "cleanup_old_cache", 1)
        beat.stop()
        stale = _sent(stack)
        deadline = max(
            datetime.fromisoformat(json.loads(raw)["headers"]["expires"])
            for raw in stack.redis_client().lrange(Queue.CLEANUP.value, 0, -1)
        )
        wait_until(lambda: datetime.now(UTC) > deadline, 30, "the queued runs to expire")

        stack.start_worker(Queue.CLEANUP)

        ids = [m.task_id for m in stale]

        def discarded() -> bool:
            with session_scope() as session:
                states = set(
                    session.scalars(select(TaskRecord.state).where(TaskRecord.task_id.in_(ids)))
                )
            return states == {"REVOKED"}

        wait_until(discarded, 30, "the worker to discard the expired runs")
        assert all(stack.producer.AsyncResult(m.task_id).state == "REVOKED" for m in stale)
        assert cache.get("v0:stale") is not None  # no stale run did any work
        fresh = dispatch.send(stack.producer, contracts.CLEANUP_OLD_CACHE)
        assert stack.producer.AsyncResult(fresh).get(timeout=30)["removed"] == 1
        assert cache.get("v0:stale") is None


def _queued(stack: Stack, queue: Queue, task: str) -> list[dict[str, Any]]:
    """The kwargs of every `task` message waiting on `queue`."""
    found = []
    for raw in stack.redis_client().lrange(queue.value, 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            found.append(json.loads(base64.b64decode(message["body"]))[1])
    return found


def test_beat_rides_out_broker_outage_fires_next_due_entry_once_relays_reports_made_in_it() -> None:
    period = 3
    with running_stack(
        beat_schedule=json.dumps({"cleanup_old_cache": str(period)}), report_relay_seconds="0.2"
    ) as stack:
        beat = _start_beat(stack)
        _wait_sends(stack, "cleanup_old_cache", 1)
        stack.redis.stop()
        # a query answered during the outage: its message is its reports' intent
        with session_scope() as session:
            session.add(Conversation(id="conv-outage", user_id="olga"))
            session.flush()
            session.add(
                Message(
                    id="msg-outage",
                    conversation_id="conv-outage",
                    user_id="olga",
                    query="q",
                    answer="a",
                    sources=[],
                    tokens_used=2,
                    processing_time_ms=1.0,
                )
            )
        time.sleep(3 * period)  # runs come due while the broker is away
        assert beat.running, f"beat exited during the outage:\n{beat.logs()[-3000:]}"

        stack.redis.start()  # the same port, empty: the schedule, the lock and the queues are gone
        back = datetime.now(UTC)
        first = _wait_sends(stack, "cleanup_old_cache", 1, timeout=30)[0]
        times = _wait_sends(stack, "cleanup_old_cache", 3, timeout=30)
        assert beat.running
        beat.stop()
        reports = _queued(stack, Queue.NOTIFICATIONS, contracts.SEND_QUERY_RESULT.name)
        statistics = _queued(stack, Queue.USER, contracts.UPDATE_USER_STATISTICS.name)

    print(
        "beat: the first run after the broker returned was sent "
        f"{(first - back).total_seconds():.1f}s later"
    )
    assert (first - back).total_seconds() <= period + 1.5  # the due entry fired, without a restart
    # once, not a burst of the missed runs
    assert all(gap >= period - EARLY for gap in _gaps(times)), _gaps(times)
    # the report made during the outage, once
    assert [r["message_id"] for r in reports] == ["msg-outage"]
    assert statistics == [{"user_id": "olga"}]
