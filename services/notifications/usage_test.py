from datetime import UTC, datetime, timedelta

from ragcore.db.models import Conversation, Message
from services.notifications.usage import (
    HOUR,
    due_periods,
    latest_reportable_hour,
    record,
    revision_for,
    usage_report,
)

START = datetime(2024, 5, 10, 14, tzinfo=UTC)


def test_an_hour_is_reportable_once_it_ended_the_lag_ago() -> None:
    lag = timedelta(minutes=10)
    assert latest_reportable_hour(datetime(2024, 5, 10, 15, 10, 0, tzinfo=UTC), lag) == START
    assert latest_reportable_hour(datetime(2024, 5, 10, 16, 9, 59, tzinfo=UTC), lag) == START
    assert latest_reportable_hour(datetime(2024, 5, 10, 15, 9, 59, tzinfo=UTC), lag) == START - HOUR


def test_due_hours_are_the_latest_at_first_then_every_one_after_the_last_recorded(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        assert due_periods(session, START) == [START]
        record(session, START - 3 * HOUR, "accepted", 0, "d")
    with sessions() as session:
        assert due_periods(session, START) == [START - 2 * HOUR, START - HOUR, START]
        record(session, START - 2 * HOUR, "refused", 0, "d")
        record(session, START - HOUR, "accepted", 0, "d")
        record(session, START, "accepted", 0, "d")
    with sessions() as session:
        assert due_periods(session, START) == []


def test_usage_counts_each_users_messages_inside_the_period_only(sessions) -> None:  # type: ignore[no-untyped-def]
    rows = [
        ("a", START, 10, 100.0),
        ("a", START + timedelta(minutes=59), 20, 300.0),
        ("b", START + timedelta(minutes=5), 7, 50.0),
        ("a", START - timedelta(seconds=1), 99, 1.0),
        ("b", START + timedelta(hours=1), 99, 1.0),
    ]
    with sessions() as session:
        session.add(Conversation(id="c", user_id="a"))
        for i, (user, at, tokens, ms) in enumerate(rows):
            session.add(
                Message(
                    id=f"m{i}",
                    conversation_id="c",
                    user_id=user,
                    query="q",
                    answer="a",
                    sources=[],
                    tokens_used=tokens,
                    processing_time_ms=ms,
                    created_at=at,
                )
            )
    with sessions() as session:
        report = usage_report(session, START, START + timedelta(hours=1))
    assert report == {
        "period_start": "2024-05-10T14:00:00+00:00",
        "period_end": "2024-05-10T15:00:00+00:00",
        "users": [
            {"user_id": "a", "queries": 2, "tokens_used": 30, "avg_processing_time_ms": 200.0},
            {"user_id": "b", "queries": 1, "tokens_used": 7, "avg_processing_time_ms": 50.0},
        ],
    }


def test_a_recomputed_hour_is_the_next_revision_only_when_its_numbers_changed(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        assert revision_for(session, START, "first") == 0
        record(session, START, "accepted", 0, "first")
    with sessions() as session:
        assert revision_for(session, START, "first") == 0  # the same numbers: the same key
        assert revision_for(session, START, "changed") == 1
        record(session, START, "accepted", 1, "changed")
    with sessions() as session:
        assert revision_for(session, START, "changed") == 1
        assert revision_for(session, START, "again") == 2
