from datetime import datetime, timedelta, timezone

from ragcore.db.models import Conversation, Message

from services.notifications.usage import last_complete_hour, usage_report

START = datetime(2024, 5, 10, 14, tzinfo=timezone.utc)



def test_the_last_complete_hour_ends_where_the_current_one_starts() -> None:
    assert last_complete_hour(datetime(2024, 5, 10, 15, 0, 0, tzinfo=timezone.utc)) == START
    assert last_complete_hour(datetime(2024, 5, 10, 15, 59, 59, tzinfo=timezone.utc)) == START


def test_usage_counts_each_users_messages_inside_the_period_only(sessions) -> None:  # type: ignore[no-untyped-def]
    rows = [("a", START, 10, 100.0), ("a", START + timedelta(minutes=59), 20, 300.0), ("b", START + timedelta(minutes=5), 7, 50.0),
            ("a", START - timedelta(seconds=1), 99, 1.0), ("b", START + timedelta(hours=1), 99, 1.0)]
    with sessions() as session:
        session.add(Conversation(id="c", user_id="a"))
        for i, (user, at, tokens, ms) in enumerate(rows):
            session.add(Message(id=f"m{i}", conversation_id="c", user_id=user, query="q", answer="a", sources=[],
                                tokens_used=tokens, processing_time_ms=ms, created_at=at))
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
