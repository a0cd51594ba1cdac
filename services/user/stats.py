"""A user's statistics, counted incrementally: each run adds only the user's messages not counted
yet, so its cost follows what is new, not the user's history, and running twice counts each
message once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ragcore.db import insert_for, utcnow
from ragcore.db.models import Message, UserStatistics


def count_new(session: Session, user_id: str) -> dict[str, Any]:
    """Claim the user's uncounted messages (one UPDATE: concurrent runs claim disjoint rows, each
    counted once), add them to the counters, and return the statistics (archived messages count:
    they happened)."""
    now = utcnow()
    claimed = (
        session.execute(
            update(Message)
            .where(Message.user_id == user_id, Message.stats_counted_at.is_(None))
            .values(stats_counted_at=now)
            .returning(Message.tokens_used, Message.processing_time_ms, Message.created_at)
            .execution_options(synchronize_session=False)
        )
        .tuples()
        .all()
    )
    insert = insert_for(session)
    session.execute(
        insert(UserStatistics)
        .values(user_id=user_id, total_queries=0, total_tokens=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["user_id"])
    )
    statistics = session.scalars(
        select(UserStatistics).where(UserStatistics.user_id == user_id).with_for_update()
    ).one()
    if claimed:
        statistics.total_queries += len(claimed)
        statistics.total_tokens += sum(tokens for tokens, _, _ in claimed)
        statistics.total_processing_time_ms += sum(ms for _, ms, _ in claimed)
        newest = max(created for _, _, created in claimed)
        if statistics.last_query_at is None or newest > statistics.last_query_at:
            statistics.last_query_at = newest
    statistics.avg_processing_time_ms = round(
        statistics.total_processing_time_ms / statistics.total_queries
        if statistics.total_queries
        else 0.0,
        3,
    )
    statistics.updated_at = now
    session.flush()
    last = statistics.last_query_at
    return {
        "user_id": user_id,
        "total_queries": statistics.total_queries,
        "total_tokens": statistics.total_tokens,
        "avg_processing_time_ms": statistics.avg_processing_time_ms,
        "last_query_at": last.isoformat() if last else None,
        "updated_at": now.isoformat(),
        "counted": len(claimed),
    }
