from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from ragcore.db import Sessions, get_engine
from ragcore.db.models import User
from ragcore.query import limits
from ragcore.settings import Settings, TierSettings

NOW = datetime(2024, 5, 10, 15, 30, tzinfo=UTC)


def _user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    assert user is not None, f"no user {user_id}"
    return user


def settings() -> Settings:
    return Settings(
        tiers=TierSettings(daily_limits={"free": 2, "pro": 5}, thresholds={"free": 0, "pro": 10})
    )


def test_next_reset_is_the_next_midnight_in_the_configured_zone() -> None:
    assert limits.next_reset(NOW, "UTC") == datetime(2024, 5, 11, tzinfo=UTC)
    # 15:30 UTC is 17:30 in Berlin (CEST): the next Berlin midnight is 22:00 UTC.
    assert limits.next_reset(NOW, "Europe/Berlin") == datetime(2024, 5, 10, 22, tzinfo=UTC)


def test_a_new_user_gets_the_default_tiers_limit(sessions: Sessions) -> None:
    with sessions() as session:
        limits.consume(session, "u1", settings(), NOW)
    with sessions() as session:
        user = _user(session, "u1")
        assert (user.tier, user.daily_limit, user.queries_today) == ("free", 2, 1)
        assert user.limit_reset_at == datetime(2024, 5, 11, tzinfo=UTC)


def test_consume_refuses_past_the_limit_and_says_when_it_resets(sessions: Sessions) -> None:
    for _ in range(2):
        with sessions() as session:
            limits.consume(session, "u1", settings(), NOW)
    with pytest.raises(limits.LimitExceeded) as refused, sessions() as session:
        limits.consume(session, "u1", settings(), NOW)
    assert refused.value.daily_limit == 2
    assert refused.value.resets_at == datetime(2024, 5, 11, tzinfo=UTC)
    with pytest.raises(limits.LimitExceeded), sessions() as session:
        limits.check(session, "u1", settings(), NOW)


def test_an_expired_window_resets_lazily_without_beat(sessions: Sessions) -> None:
    for _ in range(2):
        with sessions() as session:
            limits.consume(session, "u1", settings(), NOW)
    tomorrow = NOW + timedelta(days=1)
    with sessions() as session:
        limits.check(session, "u1", settings(), tomorrow)
        limits.consume(session, "u1", settings(), tomorrow)
    with sessions() as session:
        assert _user(session, "u1").queries_today == 1


def test_reset_all_is_one_update_statement_for_every_user(
    sessions: Sessions, tmp_path: Path
) -> None:
    for user in ("a", "b", "c"):
        with sessions() as session:
            limits.consume(session, user, settings(), NOW)
    statements: list[str] = []
    engine = get_engine(f"sqlite:///{tmp_path}/unit.db")  # the database of the `sessions` fixture
    listener = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        with sessions() as session:
            assert limits.reset_all(session, settings(), NOW) == 3
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert [s.split()[0] for s in statements] == ["UPDATE"]
    with sessions() as session:
        assert {u.queries_today for u in session.query(User)} == {0}


def test_reset_user_touches_only_that_user(sessions: Sessions) -> None:
    for user in ("a", "b"):
        with sessions() as session:
            limits.consume(session, user, settings(), NOW)
    with sessions() as session:
        assert limits.reset_user(session, "a", settings(), NOW) == 1
        assert limits.reset_user(session, "nobody", settings(), NOW) == 0
    with sessions() as session:
        assert _user(session, "a").queries_today == 0
        assert _user(session, "b").queries_today == 1
