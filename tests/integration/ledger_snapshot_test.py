"""Beat's snapshot of the ledger's window holds exactly what aggregating the window live gives, on a
real PostgreSQL ledger; a task that changes state after a snapshot shows from the next one; a
stale, missing or mismatched snapshot is not shown; /metrics serves Beat's snapshot with its age,
and the API without Beat aggregates the window itself."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete

from ragcore.db import session_scope, utcnow
from ragcore.db.models import LedgerSnapshot, TaskRecord
from ragcore.tasks import ledger
from ragcore.tasks.activity import STEPS, WINDOW, QueueActivity, queue_activity
from ragcore.tasks.ledger import snapshot
from ragcore.tasks.ledger.window import Window
from ragcore.tasks.states import TaskState
from ragcore_dev.processes import wait_until
from tests.support.stack import ADMIN_KEY, Stack

WINDOW_SECONDS = 3600
REFRESH = 10.0


def _task(
    name: str | None,
    queue: str,
    state: TaskState,
    sent_ago: float,
    started_ago: float | None = None,
    finished_ago: float | None = None,
    run_seconds: float | None = None,
) -> str:
    now = utcnow()

    def ago(seconds: float | None) -> datetime | None:
        return None if seconds is None else now - timedelta(seconds=seconds)

    task_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(
            TaskRecord(
                task_id=task_id,
                name=name,
                queue=queue,
                state=state,
                kwargs={},
                sent_at=ago(sent_ago),
                started_at=ago(started_ago),
                finished_at=ago(finished_ago),
                run_seconds=run_seconds,
            )
        )
    return task_id


def _ledger_in_several_states() -> str:
    """Tasks of two names on two queues in every kind of state, one sent before the window, one id
    revoked before any worker saw it; returns the id of a task still running."""
    stats, report = "update_user_statistics", "send_query_result_to_users"
    _task(stats, "user", TaskState.SUCCESS, 2 * WINDOW_SECONDS, 7190, 7180, 10.0)  # before
    _task(stats, "user", TaskState.SUCCESS, 3000, 2999, 2998, 0.8)
    _task(stats, "user", TaskState.SUCCESS, 1200, 1190, 1170, 20.0)
    _task(stats, "user", TaskState.FAILURE, 900, 899, 899, 0.05)
    _task(stats, "user", TaskState.RETRY, 600, 590)
    _task(report, "notifications", TaskState.PENDING, 500)
    _task(report, "notifications", TaskState.REVOKED, 400)
    _task(report, "notifications", TaskState.SUCCESS, 100, 99, 97, 2.0)
    _task(None, "notifications", TaskState.REVOKED, 50)  # revoked unseen: no name
    return _task(report, "notifications", TaskState.STARTED, 1000, 400)


def _sorted(window: Window) -> Window:
    return Window(sorted(window.counts), sorted(window.durations, key=lambda d: d.name))


def _live(now: datetime) -> tuple[Window, dict[str, QueueActivity]]:
    """Both aggregates as the requests computed them before the snapshot."""
    with session_scope() as session:
        since = now - timedelta(seconds=WINDOW_SECONDS)
        counts = _sorted(ledger.window(session, since, ledger.DURATION_BOUNDS))
        return counts, queue_activity(session, snapshot.QUEUES, now, WINDOW, STEPS)


def _shown(at: datetime) -> tuple[Window, float, dict[str, QueueActivity], float]:
    with session_scope() as session:
        counts, counts_age = snapshot.recent_window(session, WINDOW_SECONDS, REFRESH, at)
        activity, activity_age = snapshot.recent_activity(session, REFRESH, at)
    return _sorted(counts), counts_age, activity, activity_age


def _refresh(now: datetime) -> None:
    with session_scope() as session:
        snapshot.refresh(session, WINDOW_SECONDS, now)


def test_the_snapshot_holds_the_live_aggregate_and_follows_a_state_changed_after_it(
    stack: Stack,
) -> None:
    running = _ledger_in_several_states()
    now = utcnow()
    live_counts, live_activity = _live(now)  # no snapshot yet: aggregated
    states = {state for _, state, _ in live_counts.counts}
    assert states == {"SUCCESS", "FAILURE", "RETRY", "PENDING", "REVOKED", "STARTED"}
    assert sum(n for *_, n in live_counts.counts) == 8  # neither the old task nor the unnamed id

    _refresh(now)
    later = now + timedelta(seconds=4)
    counts, age, activity, activity_age = _shown(later)
    assert (counts, activity) == (live_counts, live_activity)
    assert age == activity_age == 4.0  # read from the snapshot, not aggregated at `later`

    # The running task ends after the snapshot was computed: the snapshot still says what it was
    # (within its staleness bound), the next one says what it is now.
    with session_scope() as session:
        record = session.get(TaskRecord, running)
        assert record is not None
        record.state, record.finished_at, record.run_seconds = TaskState.SUCCESS, utcnow(), 400.0
    assert _shown(later)[0] == live_counts
    changed = utcnow()
    new_counts, new_activity = _live(changed)
    assert new_counts != live_counts and new_activity != live_activity
    _refresh(changed)
    counts, age, activity, _ = _shown(changed)
    assert (counts, activity, age) == (new_counts, new_activity, 0.0)
    report = next(d for d in counts.durations if d.name == "send_query_result_to_users")
    assert (report.count, report.total_seconds) == (2, 402.0)
    assert dict(report.buckets)[300.0] == 1 and dict(report.buckets)[900.0] == 2


def test_a_stale_missing_or_mismatched_snapshot_is_not_shown(stack: Stack) -> None:
    now = utcnow()
    _refresh(now - timedelta(seconds=snapshot.STALE_ROUNDS * REFRESH + 1))  # Beat stopped
    _task("calculate_user_tier", "user", TaskState.PENDING, 10)  # after it
    live_counts, live_activity = _live(now)
    assert _shown(now) == (live_counts, 0.0, live_activity, 0.0)
    with session_scope() as session:
        # computed for another window setting (another API or Beat's configuration)
        snapshot.refresh(session, WINDOW_SECONDS // 2, now)
        assert snapshot.recent_window(session, WINDOW_SECONDS, REFRESH, now)[1] == 0.0
        session.execute(delete(LedgerSnapshot))
        assert _sorted(snapshot.recent_window(session, WINDOW_SECONDS, REFRESH, now)[0]) == (
            live_counts
        )


def _metrics(client: httpx.Client) -> tuple[dict[tuple[str, str], float], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {
        (s.labels["name"], s.labels["state"]): s.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "ragcore_tasks"
        for s in family.samples
    }
    age = next(
        s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == "ragcore_ledger_window_age_seconds"
    )
    return samples, age


def _live_samples() -> dict[tuple[str, str], float]:
    counts, _ = _live(utcnow())
    return {(name, state): float(n) for name, state, n in counts.counts}


def test_metrics_serve_beats_snapshot_with_its_age_and_aggregate_once_beat_stops(
    stack: Stack,
) -> None:
    with session_scope() as session:
        session.execute(delete(LedgerSnapshot))
    stack.start_api(metrics_snapshot_seconds="0.5")
    with stack.api(ADMIN_KEY) as client:
        assert _metrics(client) == (_live_samples(), 0.0)  # no Beat: aggregated
        beat = stack.start("services.beat.main", beat_schedule="{}", metrics_snapshot_seconds="0.5")
        wait_until(lambda: _metrics(client)[1] > 0, 60, "/metrics from Beat's snapshot")
        samples, age = _metrics(client)
        assert samples == _live_samples() and 0 < age <= snapshot.STALE_ROUNDS * 0.5

        pending = _task("reset_user_daily_limit", "user", TaskState.PENDING, 1)
        wait_until(
            lambda: _metrics(client)[0].get(("reset_user_daily_limit", "PENDING")) == 1,
            30,
            "the new task in the next snapshot",
        )
        with session_scope() as session:
            record = session.get(TaskRecord, pending)
            assert record is not None
            record.state = TaskState.REVOKED
        wait_until(
            lambda: _metrics(client)[0].get(("reset_user_daily_limit", "REVOKED")) == 1,
            30,
            "its new state in a later snapshot",
        )
        beat.stop()
        wait_until(lambda: _metrics(client)[1] == 0.0, 30, "/metrics aggregating once Beat stops")
        assert _metrics(client)[0] == _live_samples()
