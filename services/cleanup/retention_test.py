"""Retention on a real (SQLite) database: exactly the old rows go, in several small batches."""

from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db import create_schema, session_scope
from ragcore.db.models import Conversation, Message, QueryCacheEntry
from services.cleanup.retention import Sessions, archive_old_conversations, delete_old_query_cache

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def sessions(tmp_path: Path) -> Sessions:
    url = f"sqlite:///{tmp_path}/retention.db"
    create_schema(url)

    def scope() -> AbstractContextManager[Session]:
        return session_scope(url)

    return scope


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def test_query_cache_rows_older_than_days_are_deleted_across_batches_and_newer_ones_kept(sessions: Sessions) -> None:
    ages = [31, 45, 400, 30.01, 40, 33, 90, 29.99, 1, 0, 10]
    with sessions() as s:
        s.add_all(
            QueryCacheEntry(cache_key=f"k{i}", data_version=1, query="q", response={}, created_at=_days_ago(age))
            for i, age in enumerate(ages)
        )

    assert delete_old_query_cache(sessions, NOW, days=30, batch_size=3) == {"deleted": 7}

    with sessions() as s:
        kept = set(s.scalars(select(QueryCacheEntry.cache_key)))
    assert kept == {f"k{i}" for i, age in enumerate(ages) if age < 30}
    assert delete_old_query_cache(sessions, NOW, days=30, batch_size=3) == {"deleted": 0}


def _conversation(
    s: Session, cid: str, updated_days: float, message_days: list[float], archived: datetime | None = None
) -> None:
    s.add(Conversation(id=cid, user_id="u", created_at=_days_ago(400), updated_at=_days_ago(updated_days),
                       archived_at=archived))
    s.flush()
    for n, days in enumerate(message_days):
        s.add(Message(id=f"{cid}-m{n}", conversation_id=cid, user_id="u", query="q", answer="a", sources=[],
                      tokens_used=1, processing_time_ms=1.0, created_at=_days_ago(days), archived_at=archived))


def test_idle_conversations_are_archived_with_their_messages_and_nothing_is_deleted(sessions: Sessions) -> None:
    earlier = _days_ago(200)
    with sessions() as s:
        for i in range(5):
            _conversation(s, f"idle{i}", 120, [130, 125])
        _conversation(s, "idle-empty", 95, [])
        _conversation(s, "recent", 2, [2])
        _conversation(s, "stale-flag-but-recent-message", 120, [150, 3])  # updated_at was never touched
        _conversation(s, "already", 300, [300], archived=earlier)

    result = archive_old_conversations(sessions, NOW, days=90, batch_size=2)

    assert result == {"archived_conversations": 6, "archived_messages": 10}
    with sessions() as s:
        archived = dict(s.execute(select(Conversation.id, Conversation.archived_at)).all())
        messages = s.execute(select(Message.conversation_id, Message.archived_at)).all()
        assert s.scalar(select(func.count()).select_from(Conversation)) == 9
        assert s.scalar(select(func.count()).select_from(Message)) == 14
    idle = {f"idle{i}" for i in range(5)} | {"idle-empty"}
    assert {cid for cid, at in archived.items() if at == NOW} == idle
    assert archived["recent"] is None and archived["stale-flag-but-recent-message"] is None
    assert archived["already"] == earlier  # archived before: left as it was
    assert all((at == NOW) == (cid in idle) for cid, at in messages if cid != "already")
    assert archive_old_conversations(sessions, NOW, days=90, batch_size=2) == {
        "archived_conversations": 0, "archived_messages": 0,
    }
