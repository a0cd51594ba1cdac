"""The ledger's recent aggregates, precomputed: a snapshot of the whole window that Beat refreshes
every `metrics_snapshot_seconds`, which /metrics and the console's pictures read (one row each)
instead of aggregating the window on every request.

A snapshot rather than per-5-minute rollups: a task's row keeps changing after it was sent (started,
ended, retried, ended by the reconciler), so no past bucket is ever final; exact rollups would mean
recomputing each bucket that holds an unfinished task, plus the window's partly expired oldest
bucket and the open one at every request, for nearly the same rows read and many more parts. The
snapshot runs the two statements the requests ran (docs/benchmarks.md: the window's counts and
durations, and each queue's activity), once per interval however many scrapers, API replicas and
operators ask.

Staleness: what a request shows is the window as it was at the snapshot's `computed_at`, at most
`STALE_ROUNDS` intervals old (30 s by default), normally less than one. A snapshot older than that
(Beat stopped, its rounds failing), none at all (before Beat's first round; an API started without
Beat, as the tests start it) or one computed for other parameters (another window setting or other
bounds, as in a rolling upgrade) is not used: the request aggregates the window itself, as before.
/metrics tells the age it served (`ragcore_ledger_window_age_seconds`, 0 when it aggregated).

Two Beats take turns through a non-blocking Redis lock, so one round runs at a time.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy.orm import Session

from ragcore.background import PeriodicThread
from ragcore.db import session_scope, utcnow
from ragcore.db.models import LedgerSnapshot
from ragcore.db.outage import Outage
from ragcore.settings import ApiSettings, RedisSettings
from ragcore.tasks import activity
from ragcore.tasks.activity import QueueActivity, queue_activity
from ragcore.tasks.contracts import Queue
from ragcore.tasks.ledger.window import DURATION_BOUNDS, Durations, Window, window
from ragcore.tasks.locks import lock_client, periodic_lock

#: A snapshot older than this many refresh intervals is not shown: Beat is not refreshing it.
STALE_ROUNDS = 3
WINDOW, ACTIVITY = "window", "activity"
LOCK = "ledger-snapshot"
QUEUES = [q.value for q in Queue]


def _window_params(window_seconds: int) -> dict[str, Any]:
    return {"window_seconds": window_seconds, "bounds": list(DURATION_BOUNDS)}


def _activity_params() -> dict[str, Any]:
    return {
        "window_seconds": activity.WINDOW.total_seconds(),
        "steps": activity.STEPS,
        "queues": QUEUES,
    }


def _live_window(session: Session, window_seconds: int, now: datetime) -> Window:
    return window(session, now - timedelta(seconds=window_seconds), DURATION_BOUNDS)


def _live_activity(session: Session, now: datetime) -> dict[str, QueueActivity]:
    return queue_activity(session, QUEUES, now, activity.WINDOW, activity.STEPS)


def _store(session: Session, name: str, now: datetime, params: Any, figures: Any) -> None:
    session.merge(LedgerSnapshot(name=name, computed_at=now, body={"for": params, **figures}))


def refresh(session: Session, window_seconds: int, now: datetime) -> None:
    """Compute both aggregates as of `now` and store them (what Beat's round does)."""
    counts = _live_window(session, window_seconds, now)
    queues = _live_activity(session, now)
    _store(session, WINDOW, now, _window_params(window_seconds), dataclasses.asdict(counts))
    figures = {
        "queues": {
            name: {
                "ends": [e.isoformat() for e in a.ends],
                "waiting": a.waiting,
                "finished": a.finished,
            }
            for name, a in queues.items()
        }
    }
    _store(session, ACTIVITY, now, _activity_params(), figures)


def _fresh(
    session: Session, name: str, params: Any, refresh_seconds: float, now: datetime
) -> tuple[dict[str, Any], float] | None:
    """The stored figures of `name` and their age, if computed for `params` and not stale."""
    row = session.get(LedgerSnapshot, name)
    if row is None or row.body.get("for") != params:
        return None
    age = max(0.0, (now - row.computed_at).total_seconds())
    return (row.body, age) if age <= STALE_ROUNDS * refresh_seconds else None


def recent_window(
    session: Session, window_seconds: int, refresh_seconds: float, now: datetime
) -> tuple[Window, float]:
    """/metrics' counts and durations of the tasks sent in the last `window_seconds`, and their age
    in seconds: Beat's snapshot, or aggregated now (age 0) when it is missing or stale."""
    found = _fresh(session, WINDOW, _window_params(window_seconds), refresh_seconds, now)
    if found is None:
        return _live_window(session, window_seconds, now), 0.0
    body, age = found
    durations = [
        Durations(d["name"], [(b, n) for b, n in d["buckets"]], d["total_seconds"], d["count"])
        for d in body["durations"]
    ]
    return Window([(name, state, n) for name, state, n in body["counts"]], durations), age


def recent_activity(
    session: Session, refresh_seconds: float, now: datetime
) -> tuple[dict[str, QueueActivity], float]:
    """Each queue's last hour (the console's picture) and its age: Beat's snapshot, or aggregated
    now (age 0) when it is missing or stale."""
    found = _fresh(session, ACTIVITY, _activity_params(), refresh_seconds, now)
    if found is None:
        return _live_activity(session, now), 0.0
    body, age = found
    queues = {
        name: QueueActivity(
            name, [datetime.fromisoformat(e) for e in a["ends"]], a["waiting"], a["finished"]
        )
        for name, a in body["queues"].items()
    }
    return queues, age


class Snapshotter(PeriodicThread):
    """Beat's `ledger-snapshot` thread: `refresh` every `metrics_snapshot_seconds`, under a lock.

    A database outage is told by PeriodicThread; a broker outage (the lock's Redis) here."""

    def __init__(self, metrics: ApiSettings, redis_settings: RedisSettings) -> None:
        super().__init__("ledger-snapshot", metrics.metrics_snapshot_seconds, self.round)
        self._metrics = metrics
        self._redis = redis_settings
        self._broker = Outage("ledger-snapshot", "the broker")

    def round(self) -> None:
        # The lock frees itself if Beat dies mid-round; a round takes well under a minute.
        ttl = int(max(60.0, 2 * self._metrics.metrics_snapshot_seconds))
        try:
            with periodic_lock(lock_client(self._redis), LOCK, ttl=ttl) as acquired:
                if acquired:
                    with session_scope() as session:
                        refresh(session, self._metrics.metrics_window_seconds, utcnow())
        except redis.RedisError as exc:
            self._broker.failed(exc)
            return
        self._broker.over()
