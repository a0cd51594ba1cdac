"""Retention on a real (SQLite) database: exactly the old rows go, in several small batches."""

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db import create_schema, session_scope
from ragcore.db.models import (
    Conversation,
    FailedDelivery,
    Message,
    QueryCacheEntry,
    SyncEvent,
    TaskRecord,
)
from ragcore.settings import RetentionSettings
from services.cleanup.retention import (
    Sessions,
    apply_retention,
    archive_old_conversations,
    delete_old_query_cache,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def sessions(tmp_path: Path) -> Sessions:
    url = f"sqlite:///{tmp_path}/retention.db"
    create_schema(url)

    def scope() -> AbstractContextManager[Session]:
        return session_scope(url)

    return scope


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def test_query_cache_rows_older_than_days_are_deleted_across_batches_and_newer_ones_kept(
    sessions: Sessions,
) -> None:
    ages = [31, 45, 400, 30.01, 40, 33, 90, 29.99, 1, 0, 10]
    with sessions() as s:
        s.add_all(
            QueryCacheEntry(
                cache_key=f"k{i}", data_version=1, query="q", response={}, created_at=_days_ago(age)
            )
            for i, age in enumerate(ages)
        )

    assert delete_old_query_cache(sessions, NOW, days=30, batch_size=3) == {"deleted": 7}

    with sessions() as s:
        kept = set(s.scalars(select(QueryCacheEntry.cache_key)))
    assert kept == {f"k{i}" for i, age in enumerate(ages) if age < 30}
    assert delete_old_query_cache(sessions, NOW, days=30, batch_size=3) == {"deleted": 0}


def _conversation(
    s: Session,
    cid: str,
    updated_days: float,
    message_days: list[float],
    archived: datetime | None = None,
) -> None:
    s.add(
        Conversation(
            id=cid,
            user_id="u",
            created_at=_days_ago(400),
            updated_at=_days_ago(updated_days),
            archived_at=archived,
        )
    )
    s.flush()
    for n, days in enumerate(message_days):
        s.add(
            Message(
                id=f"{cid}-m{n}",
                conversation_id=cid,
                user_id="u",
                query="q",
                answer="a",
                sources=[],
                tokens_used=1,
                processing_time_ms=1.0,
                created_at=_days_ago(days),
                archived_at=archived,
            )
        )


def test_idle_conversations_are_archived_with_their_messages_and_nothing_is_deleted(
    sessions: Sessions,
) -> None:
    earlier = _days_ago(200)
    with sessions() as s:
        for i in range(5):
            _conversation(s, f"idle{i}", 120, [130, 125])
        _conversation(s, "idle-empty", 95, [])
        _conversation(s, "recent", 2, [2])
        # updated_at was never touched
        _conversation(s, "stale-flag-but-recent-message", 120, [150, 3])
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
        "archived_conversations": 0,
        "archived_messages": 0,
    }


#: (state, finished days ago or None, sent days ago): whether retention at 30 days deletes it.
LEDGER = {
    "success-old": ("SUCCESS", 31, 31, True),
    "failure-old": ("FAILURE", 45, 46, True),
    "revoked-old": ("REVOKED", 400, 400, True),
    "finished-no-time-old": ("SUCCESS", None, 40, True),
    "success-new": ("SUCCESS", 29.9, 35, False),  # sent long ago, finished recently: kept
    "failure-new": ("FAILURE", 1, 1, False),
    "finished-no-time-new": ("REVOKED", None, 2, False),
    "pending-old": ("PENDING", None, 400, False),
    "started-old": ("STARTED", None, 400, False),
    "retry-old": ("RETRY", None, 400, False),
    "received-old": ("RECEIVED", None, 400, False),
}
#: status, created days ago, re-driven days ago: whether retention at 90 days deletes it.
DELIVERIES = {
    1: ("redriven", 100, 95, True),
    2: ("discarded", 200, None, True),
    3: ("redriven", 100, 10, False),  # re-driven recently: its outcome may still be looked at
    4: ("redriven", 30, 30, False),
    5: ("failed", 400, None, False),  # never resolved: kept however old
    6: ("waiting", 400, None, False),  # a status retention does not know: kept
    7: ("retrying", 400, None, False),
}
#: status, received days ago: whether retention at 7 days deletes it.
EVENTS = {
    1: ("done", 8, True),
    2: ("done", 30, True),
    3: ("done", 6.9, False),
    4: ("pending", 30, False),
    5: ("claimed", 30, False),
    6: ("failed", 30, False),
}


def _ago(days: float | None) -> datetime | None:
    return None if days is None else _days_ago(days)


def test_retention_deletes_exactly_the_rows_past_their_age_and_nothing_unfinished(
    sessions: Sessions,
) -> None:
    with sessions() as s:
        for task_id, (state, finished, sent, _) in LEDGER.items():
            s.add(
                TaskRecord(
                    task_id=task_id,
                    name="t",
                    queue="q",
                    state=state,
                    kwargs={},
                    sent_at=_days_ago(sent),
                    finished_at=_ago(finished),
                )
            )
        for i, (status, created, redriven, _) in DELIVERIES.items():
            s.add(
                FailedDelivery(
                    id=i,
                    task_name="t",
                    task_id=f"d{i}",
                    payload={},
                    error="e",
                    attempts=4,
                    status=status,
                    created_at=_days_ago(created),
                    redriven_at=_ago(redriven),
                )
            )
        for i, (status, received, _) in EVENTS.items():
            s.add(
                SyncEvent(
                    id=i,
                    document_id=f"doc{i}",
                    action="upsert",
                    status=status,
                    occurred_at=_days_ago(received),
                    received_at=_days_ago(received),
                )
            )
        for i, age in enumerate((31, 29)):
            s.add(
                QueryCacheEntry(
                    cache_key=f"k{i}",
                    data_version=1,
                    query="q",
                    response={},
                    created_at=_days_ago(age),
                )
            )
    keep = RetentionSettings(
        task_ledger_days=30,
        failed_deliveries_days=90,
        sync_events_days=7,
        query_cache_days=30,
        batch_size=2,
    )

    result = apply_retention(sessions, NOW, keep)

    assert result == {
        "deleted": {"task_ledger": 4, "failed_deliveries": 2, "sync_events": 2, "query_cache": 1}
    }
    with sessions() as s:
        assert set(s.scalars(select(TaskRecord.task_id))) == {
            k for k, v in LEDGER.items() if not v[-1]
        }
        assert set(s.scalars(select(FailedDelivery.id))) == {
            k for k, v in DELIVERIES.items() if not v[-1]
        }
        assert set(s.scalars(select(SyncEvent.id))) == {k for k, v in EVENTS.items() if not v[-1]}
        assert set(s.scalars(select(QueryCacheEntry.cache_key))) == {"k1"}
    assert apply_retention(sessions, NOW, keep) == {
        "deleted": {"task_ledger": 0, "failed_deliveries": 0, "sync_events": 0, "query_cache": 0}
    }
