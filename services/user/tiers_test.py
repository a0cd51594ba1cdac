from datetime import UTC, datetime, timedelta

from sqlalchemy import event

from ragcore.db import Sessions
from ragcore.db.models import Conversation, Message, User, UserStatistics
from ragcore.settings import Settings, TierSettings
from services.user import stats, tiers

NOW = datetime(2024, 5, 10, 12, tzinfo=UTC)
SETTINGS = Settings(
    tiers=TierSettings(
        daily_limits={"free": 10, "pro": 100, "enterprise": 1000},
        thresholds={"free": 0, "pro": 2, "enterprise": 50},
    )
)


def add_messages(
    sessions: Sessions, user: str, *ages: timedelta, tokens: int = 5, ms: float = 10.0
) -> None:
    with sessions() as session:
        if session.get(Conversation, f"c-{user}") is None:
            session.add(Conversation(id=f"c-{user}", user_id=user))
        for age in ages:
            session.add(
                Message(
                    id=f"{user}-{age.total_seconds()}",
                    conversation_id=f"c-{user}",
                    user_id=user,
                    query="q",
                    answer="a",
                    sources=[],
                    tokens_used=tokens,
                    processing_time_ms=ms,
                    created_at=NOW - age,
                )
            )


def test_tier_for_picks_the_highest_threshold_reached() -> None:
    thresholds = SETTINGS.tiers.thresholds
    assert [tiers.tier_for(n, thresholds) for n in (0, 1, 2, 49, 50, 10**6)] == [
        "free",
        "free",
        "pro",
        "pro",
        "enterprise",
        "enterprise",
    ]


def test_crossing_a_threshold_changes_the_tier_and_its_daily_limit(sessions: Sessions) -> None:
    # the old one is outside the window
    add_messages(sessions, "u", timedelta(days=1), timedelta(days=31))
    with sessions() as session:
        assert tiers.apply_tier(session, "u", SETTINGS.tiers, NOW)["tier"] == "free"
    add_messages(sessions, "u", timedelta(hours=1))
    with sessions() as session:
        result = tiers.apply_tier(session, "u", SETTINGS.tiers, NOW)
    assert (
        result["tier"],
        result["previous_tier"],
        result["queries_30d"],
        result["daily_limit"],
    ) == ("pro", "free", 2, 100)
    with sessions() as session:
        user = session.get(User, "u")
        assert user is not None
        assert (user.tier, user.daily_limit) == ("pro", 100)


def test_counting_statistics_twice_counts_each_message_once(sessions: Sessions) -> None:
    add_messages(sessions, "u", timedelta(hours=2), timedelta(hours=1))
    for _ in range(2):
        with sessions() as session:
            stats.count_new(session, "u")
    with sessions() as session:
        row = session.get(UserStatistics, "u")
        assert row is not None
        assert (row.total_queries, row.total_tokens, row.avg_processing_time_ms) == (2, 10, 10.0)
        assert row.last_query_at == NOW - timedelta(hours=1)


def test_a_run_counts_only_the_messages_that_are_new(sessions: Sessions) -> None:
    add_messages(sessions, "u", timedelta(hours=3), timedelta(hours=2))
    with sessions() as session:
        assert stats.count_new(session, "u")["counted"] == 2
    add_messages(sessions, "u", timedelta(minutes=30))
    with sessions() as session:
        result = stats.count_new(session, "u")
    assert (result["counted"], result["total_queries"], result["total_tokens"]) == (1, 3, 15)
    assert result["last_query_at"] == (NOW - timedelta(minutes=30)).isoformat()


def test_a_run_with_nothing_new_writes_nothing(sessions: Sessions) -> None:
    add_messages(sessions, "u", timedelta(hours=1))
    with sessions() as session:
        assert stats.count_new(session, "u")["counted"] == 1
    with sessions() as session:
        before = session.get(UserStatistics, "u")
        assert before is not None
        updated_at = before.updated_at
    statements: list[str] = []
    with sessions() as session:
        event.listen(
            session.get_bind(),
            "before_cursor_execute",
            lambda _c, _k, statement, *_: statements.append(statement),
        )
        assert stats.count_new(session, "u") == {"user_id": "u", "counted": 0}
    # one read: no UPDATE, which on SQLite would take the write lock to change nothing
    assert len(statements) == 1 and statements[0].lstrip().startswith("SELECT")
    with sessions() as session:
        after = session.get(UserStatistics, "u")
        assert after is not None
        assert (after.total_queries, after.updated_at) == (1, updated_at)


def test_counts_add_up_across_runs_with_the_average_rounded(sessions: Sessions) -> None:
    add_messages(sessions, "u", timedelta(hours=3), timedelta(hours=2))
    with sessions() as session:
        stats.count_new(session, "u")
    # older than what was counted: the newest stays the last query
    add_messages(sessions, "u", timedelta(hours=4), tokens=7, ms=11.0)
    with sessions() as session:
        result = stats.count_new(session, "u")
    assert (result["counted"], result["total_queries"], result["total_tokens"]) == (1, 3, 17)
    assert result["avg_processing_time_ms"] == 10.333
    assert result["last_query_at"] == (NOW - timedelta(hours=2)).isoformat()
    with sessions() as session:
        row = session.get(UserStatistics, "u")
        assert row is not None
        assert (row.total_processing_time_ms, row.avg_processing_time_ms) == (31.0, 10.333)
        assert row.last_query_at == NOW - timedelta(hours=2)


def test_set_tier_creates_the_user_then_changes_only_its_tier_and_limit(
    sessions: Sessions,
) -> None:
    add_messages(sessions, "u", timedelta(hours=1))
    with sessions() as session:
        assert tiers.set_tier(session, "u", SETTINGS.tiers, NOW) == "free"
    with sessions() as session:
        user = session.get(User, "u")
        assert user is not None
        assert (user.tier, user.daily_limit, user.queries_today) == ("free", 10, 0)
        user.queries_today = 3
    add_messages(sessions, "u", timedelta(minutes=30))
    with sessions() as session:
        assert tiers.set_tier(session, "u", SETTINGS.tiers, NOW) == "pro"
    with sessions() as session:
        assert tiers.set_tier(session, "u", SETTINGS.tiers, NOW) == "pro"  # unchanged
    with sessions() as session:
        user = session.get(User, "u")
        assert user is not None
        assert (user.tier, user.daily_limit, user.queries_today) == ("pro", 100, 3)
