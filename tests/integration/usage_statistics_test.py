"""Hourly usage statistics count the queries still in flight at the hour, and catch up hours missed,
each once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from ragcore.db import session_scope, utcnow
from ragcore.db.models import Conversation, Message
from ragcore.tasks import contracts, dispatch
from ragcore_dev.processes import Deployable
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from services.notifications.usage import HOUR, hour_start
from tests.support.stack import Stack, running_stack


@pytest.fixture
def users() -> Iterator[Running[UsersApp]]:
    with start_users() as running:
        yield running


@pytest.fixture
def stack(users: Running[UsersApp]) -> Iterator[Stack]:
    with running_stack(users_url=users.url) as stack:
        with session_scope() as session:
            session.add(Conversation(id="usage", user_id="u"))
        yield stack


def _worker(stack: Stack, name: str, lag: float) -> Deployable:
    return stack.start_worker(
        contracts.Queue.NOTIFICATIONS, name=name, usage_report_lag_seconds=str(int(lag))
    )


def _report(stack: Stack) -> None:
    task_id = dispatch.send(stack.producer, contracts.SEND_USAGE_STATISTICS)
    stack.producer.AsyncResult(task_id).get(timeout=60)


def _message(i: int, user: str, at: datetime) -> Message:
    return Message(
        id=f"m-{user}-{i}",
        conversation_id="usage",
        user_id=user,
        query="q",
        answer="a",
        sources=[],
        tokens_used=10,
        processing_time_ms=5.0,
        created_at=at,
    )


def _reports(users: Running[UsersApp]) -> dict[str, dict[str, int]]:
    """period_start → queries per user, of every report Users accepted."""
    return {
        d["payload"]["period_start"]: {u["user_id"]: u["queries"] for u in d["payload"]["users"]}
        for d in users.app.deliveries("usage-statistics")
    }


def _last_hour_with_time_left() -> datetime:
    """The start of the hour that just ended, with two minutes of the current hour left for the
    test."""
    if utcnow() + timedelta(seconds=120) >= hour_start(utcnow()) + HOUR:
        time.sleep((hour_start(utcnow()) + HOUR - utcnow()).total_seconds() + 1)
    return hour_start(utcnow()) - HOUR


def test_a_query_that_started_before_the_hour_and_committed_after_it_is_counted_in_its_hour(
    stack: Stack, users: Running[UsersApp]
) -> None:
    hour = _last_hour_with_time_left()
    # The worker treats the hour as ended "just now": it may report it 45 s from now, no sooner.
    due_at = utcnow() + timedelta(seconds=45)
    worker = _worker(stack, "usage-lag", (due_at - (hour + HOUR)).total_seconds())
    with session_scope() as slow_query:  # started in the hour, still running when it ends
        slow_query.add(_message(0, "slow", hour + HOUR - timedelta(seconds=1)))
        slow_query.flush()
        _report(stack)  # the Beat run right after the boundary
        assert hour.isoformat() not in _reports(users)
    # ... and committed after the boundary.

    time.sleep(max(0.0, (due_at - utcnow()).total_seconds()) + 1)
    _report(stack)
    assert _reports(users)[hour.isoformat()] == {"slow": 1}
    assert users.app.duplicates["usage-statistics"] == 0
    worker.stop()


def test_after_a_three_hour_gap_every_missed_hour_is_reported_once_in_order(
    stack: Stack, users: Running[UsersApp]
) -> None:
    hour = _last_hour_with_time_left()
    gap = [hour - 2 * HOUR, hour - HOUR, hour]
    # Reports ran until `hour - 3h`; then nothing ran for three hours.
    before = _worker(stack, "usage-before", (utcnow() - (hour - 2 * HOUR)).total_seconds())
    _report(stack)
    before.stop()
    assert list(_reports(users)) == [(hour - 3 * HOUR).isoformat()]
    with session_scope() as session:
        session.add_all(
            [_message(i, f"user-{i}", start + timedelta(minutes=30)) for i, start in enumerate(gap)]
        )

    _worker(stack, "usage-after", 0)
    _report(stack)
    _report(stack)  # nothing is due any more: nothing is sent twice
    sent = [d["payload"]["period_start"] for d in users.app.deliveries("usage-statistics")]
    assert sent == [(hour - 3 * HOUR).isoformat(), *(h.isoformat() for h in gap)]
    assert [_reports(users)[h.isoformat()] for h in gap] == [
        {"user-0": 1},
        {"user-1": 1},
        {"user-2": 1},
    ]
    assert users.app.duplicates["usage-statistics"] == 0
