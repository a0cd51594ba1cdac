"""Beat, from its entrypoint, against a real Redis: a run due while the result backend's Redis is
unreachable goes out on time, once, and an entry whose record Redis lost keeps its schedule.

What Beat sent is read from the queues' Redis lists (no worker consumes them), as in beat_test.py.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from redbeat import RedBeatSchedulerEntry

from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, wait_until
from tests.support.stack import Stack, running_stack
from tests.support.tcp_proxy import tcp_proxy

PREFIX = "ragcore:redbeat:"
EARLY = 0.25


def _sends(stack: Stack, task: str) -> int:
    return sum(
        json.loads(raw)["headers"]["task"] == task
        for queue in Queue
        for raw in stack.redis_client().lrange(queue.value, 0, -1)
    )


def _start_beat(stack: Stack, **settings: str) -> Deployable:
    beat = stack.start("services.beat.main", **settings)

    def leading() -> bool:
        if not beat.running:
            raise RuntimeError(f"beat exited:\n{beat.logs()[-4000:]}")
        return "beat: Acquired lock" in beat.logs()

    wait_until(leading, 90, "beat to take the leader lock")
    return beat


def test_a_run_due_while_the_result_backend_is_unreachable_goes_out_on_time_once() -> None:
    # Beat publishes only (ragcore.tasks.app.publish_only): its publish no longer subscribes to
    # the result's channel, so the result backend's Redis is not on its path. (Before, the due
    # run's publish failed until that Redis returned, and went out at the next tick after.)
    period = 30  # one due run within the test
    with running_stack(beat_schedule=json.dumps({"cleanup_old_cache": str(period)})) as stack:
        host, port = "127.0.0.1", stack.redis.port
        with tcp_proxy(host, port) as proxy:
            # Beat's result backend on its own path to Redis, the broker on the direct one
            beat = _start_beat(stack, result_backend_url=f"redis://{host}:{proxy.port}/0")
            proxy.cut()
            wait_until(
                lambda: _sends(stack, "cleanup_old_cache") >= 1, period + 60, "the due run sent"
            )
            time.sleep(6)  # more ticks: the run is not sent again
            assert _sends(stack, "cleanup_old_cache") == 1
            assert "Couldn't apply scheduled task cleanup_old_cache" not in beat.logs()
            assert beat.running
            proxy.restore()
            beat.stop()


def test_an_entry_whose_record_was_lost_keeps_its_schedule_and_never_fires_at_once() -> None:
    period = 2
    daily = (datetime.now(UTC) + timedelta(hours=12)).hour  # far from due during the test
    schedule = {"cleanup_old_cache": str(period), "reset_all_daily_limits": f"0 {daily} * * *"}
    with running_stack(beat_schedule=json.dumps(schedule)) as stack:
        beat = _start_beat(stack)
        wait_until(lambda: _sends(stack, "cleanup_old_cache") >= 1, 60, "a first run")
        redis = stack.redis_client()
        # The daily entry's last run is lost while it is listed due; the interval entry's whole
        # record is lost (its key stays in RedBeat's schedule index).
        daily_key, interval_key = PREFIX + "reset_all_daily_limits", PREFIX + "cleanup_old_cache"
        redis.hdel(daily_key, "meta")
        redis.zadd(PREFIX + ":schedule", {daily_key: 0})
        redis.delete(interval_key)
        lost_at = _sends(stack, "cleanup_old_cache")
        wait_until(
            lambda: _sends(stack, "cleanup_old_cache") >= lost_at + 3,
            60,
            "the interval entry to keep firing after its record was lost",
        )
        time.sleep(period)
        assert _sends(stack, "reset_all_daily_limits") == 0, "fired outside its schedule"
        stored = RedBeatSchedulerEntry.decode_meta(redis.hget(daily_key, "meta"))
        assert stored["last_run_at"] is not None  # recorded again: it waits for its next time
        assert beat.running
        beat.stop()
