"""A user's statistics, recomputed from the messages table: running twice counts each message
once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db import insert_for, utcnow
from ragcore.db.models import Message, UserStatistics


def recompute(session: Session, user_id: str) -> dict[str, Any]:
    """Aggregate the user's messages and upsert the result (archived messages count: they
    happened)."""
    queries, tokens, avg_ms, last = (
        session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Message.tokens_used), 0),
                func.coalesce(func.avg(Message.processing_time_ms), 0.0),
                func.max(Message.created_at),
            ).where(Message.user_id == user_id)
        )
        .tuples()
        .one()
    )
    now = utcnow()
    values: dict[str, Any] = {
        "total_queries": int(queries),
        "total_tokens": int(tokens),
        "avg_processing_time_ms": round(float(avg_ms), 3),
        "last_query_at": last,
        "updated_at": now,
    }
    insert = insert_for(session)
    session.execute(
        insert(UserStatistics)
        .values(user_id=user_id, **values)
        .on_conflict_do_update(index_elements=["user_id"], set_=values)
    )
    return {
        "user_id": user_id,
        **values,
        "last_query_at": last.isoformat() if last else None,
        "updated_at": now.isoformat(),
    }
