"""The user worker keeps daily limits, statistics and tiers in the database, idempotently."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from ragcore.db import session_scope, utcnow
from ragcore.db.models import Conversation, Message, TaskRecord, User, UserStatistics
from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch, ledger
from ragcore.tasks.locks import lock_client, periodic_lock
from ragcore_dev.processes import wait_until
from tests.support.stack import Stack

TIERS = {
    "tier_thresholds": '{"free": 0, "pro": 2, "enterprise": 100}',
    "tier_daily_limits": '{"free": 5, "pro": 50, "enterprise": 500}',
}


@pytest.fixture(scope="module", autouse=True)
def worker(stack: Stack) -> None:
    stack.start_worker(contracts.Queue.USER, **TIERS)


def run(stack: Stack, task: contracts.TaskContract, kwargs: dict[str, Any] | None = None) -> Any:
    """Send by name and wait for the outcome in the ledger (update_user_statistics stores no
    result)."""
    task_id = dispatch.send(stack.producer, task, kwargs)

    def outcome() -> TaskRecord | None:
        with session_scope() as session:
            record = ledger.get(session, task_id)
            return record if record is not None and record.state in ("SUCCESS", "FAILURE") else None

    record = wait_until(outcome, 30, f"{task.name} {task_id}")
    assert record.state == "SUCCESS", record.error
    return record.result


def add_message(user_id: str, tokens: int = 10, ms: float = 100.0) -> str:
    message_id = f"msg-{uuid.uuid4()}"
    with session_scope() as session:
        if session.get(Conversation, f"conv-{user_id}") is None:
            session.add(Conversation(id=f"conv-{user_id}", user_id=user_id))
            session.flush()
        session.add(
            Message(
                id=message_id,
                conversation_id=f"conv-{user_id}",
                user_id=user_id,
                query="q",
                answer="a",
                sources=[],
                tokens_used=tokens,
                processing_time_ms=ms,
                created_at=utcnow(),
            )
        )
    return message_id


def user(session: Session, user_id: str) -> User:
    """The user's row, which the test created or a task must have created."""
    found = session.get(User, user_id)
    assert found is not None, f"no user {user_id}"
    return found


def add_user(user_id: str, queries_today: int) -> None:
    with session_scope() as session:
        session.add(
            User(
                user_id=user_id,
                tier="free",
                daily_limit=5,
                queries_today=queries_today,
                limit_reset_at=utcnow() + timedelta(hours=3),
            )
        )


def test_update_user_statistics_run_twice_for_one_message_counts_it_once(stack: Stack) -> None:
    add_message("stats-user", tokens=12, ms=40.0)
    for _ in range(2):
        run(stack, contracts.UPDATE_USER_STATISTICS, {"user_id": "stats-user"})
    with session_scope() as session:
        stats = session.get(UserStatistics, "stats-user")
        assert stats is not None
        assert (stats.total_queries, stats.total_tokens, stats.avg_processing_time_ms) == (
            1,
            12,
            40.0,
        )
    add_message("stats-user", tokens=8, ms=60.0)
    run(stack, contracts.UPDATE_USER_STATISTICS, {"user_id": "stats-user"})
    with session_scope() as session:
        stats = session.get(UserStatistics, "stats-user")
        assert stats is not None
        assert (stats.total_queries, stats.total_tokens, stats.avg_processing_time_ms) == (
            2,
            20,
            50.0,
        )


def test_the_tier_changes_when_the_30_day_threshold_is_crossed_and_sets_the_daily_limit(
    stack: Stack,
) -> None:
    add_message("tier-user")
    assert run(stack, contracts.CALCULATE_USER_TIER, {"user_id": "tier-user"})["tier"] == "free"
    add_message("tier-user")
    result = run(stack, contracts.CALCULATE_USER_TIER, {"user_id": "tier-user"})
    assert (result["tier"], result["previous_tier"], result["daily_limit"]) == ("pro", "free", 50)
    with session_scope() as session:
        tiered = user(session, "tier-user")
        assert (tiered.tier, tiered.daily_limit) == ("pro", 50)


def test_reset_user_daily_limit_resets_only_that_user(stack: Stack) -> None:
    add_user("reset-one", 5)
    add_user("reset-other", 4)
    assert run(stack, contracts.RESET_USER_DAILY_LIMIT, {"user_id": "reset-one"})["reset"] == 1
    with session_scope() as session:
        assert user(session, "reset-one").queries_today == 0
        assert user(session, "reset-other").queries_today == 4


def test_reset_all_daily_limits_resets_every_user(stack: Stack) -> None:
    for i in range(5):
        add_user(f"reset-all-{i}", i + 1)
    assert run(stack, contracts.RESET_ALL_DAILY_LIMITS)["reset"] >= 5
    with session_scope() as session:
        assert all(user(session, f"reset-all-{i}").queries_today == 0 for i in range(5))


def test_reset_all_daily_limits_skips_while_another_run_holds_its_lock(stack: Stack) -> None:
    add_user("locked-user", 3)
    with periodic_lock(
        lock_client(get_settings().redis), contracts.RESET_ALL_DAILY_LIMITS.name, ttl=60
    ) as acquired:
        assert acquired
        assert run(stack, contracts.RESET_ALL_DAILY_LIMITS) == {"skipped": "already running"}
    with session_scope() as session:
        assert user(session, "locked-user").queries_today == 3
