from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event

from ragcore.db import get_engine
from ragcore.db.models import User
from ragcore.query import limits
from ragcore.settings import Settings

NOW = datetime(2024, 5, 10, 15, 30, tzinfo=timezone.utc)



def settings(**overrides: object) -> Settings:
    return Settings(tier_daily_limits={"free": 2, "pro": 5}, tier_thresholds={"free": 0, "pro": 10}, **overrides)


def test_next_reset_is_the_next_midnight_in_the_configured_zone() -> None:
    assert limits.next_reset(NOW, "UTC") == datetime(2024, 5, 11, tzinfo=timezone.utc)
    # 15:30 UTC is 17:30 in Berlin (CEST): the next Berlin midnight is 22:00 UTC.
    assert limits.next_reset(NOW, "Europe/Berlin") == datetime(2024, 5, 10, 22, tzinfo=timezone.utc)


def test_a_new_user_gets_the_default_tiers_limit(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        limits.consume(session, "u1", settings(), NOW)
    with sessions() as session:
        user = session.get(User, "u1")
        assert (user.tier, user.daily_limit, user.queries_today) == ("free", 2, 1)
        assert user.limit_reset_at == datetime(2024, 5, 11, tzinfo=timezone.utc)


def test_consume_refuses_past_the_limit_and_says_when_it_resets(sessions) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):
        with sessions() as session:
            limits.consume(session, "u1", settings(), NOW)
    with pytest.raises(limits.LimitExceeded) as refused, sessions() as session:
        limits.consume(session, "u1", settings(), NOW)
    assert refused.value.daily_limit == 2
    assert refused.value.resets_at == datetime(2024, 5, 11, tzinfo=timezone.utc)
    with pytest.raises(limits.LimitExceeded), sessions() as session:
        limits.check(session, "u1", settings(), NOW)


def test_an_expired_window_resets_lazily_without_beat(sessions) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):
        with sessions() as session:
            limits.consume(session, "u1", settings(), NOW)
    tomorrow = NOW + timedelta(days=1)
    with sessions() as session:
        limits.check(session, "u1", settings(), tomorrow)
        limits.consume(session, "u1", settings(), tomorrow)
    with sessions() as session:
        assert session.get(User, "u1").queries_today == 1


def test_reset_all_is_one_update_statement_for_every_user(sessions, tmp_path) -> None:  # type: ignore[no-untyped-def]
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


def test_reset_user_touches_only_that_user(sessions) -> None:  # type: ignore[no-untyped-def]
    for user in ("a", "b"):
        with sessions() as session:
            limits.consume(session, user, settings(), NOW)
    with sessions() as session:
        assert limits.reset_user(session, "a", settings(), NOW) == 1
        assert limits.reset_user(session, "nobody", settings(), NOW) == 0
    with sessions() as session:
        assert session.get(User, "a").queries_today == 0
        assert session.get(User, "b").queries_today == 1
