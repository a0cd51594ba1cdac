"""A user's statistics, counted incrementally: each run adds only the user's messages not counted
yet, so its cost follows what is new, not the user's history, and running twice counts each
message once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Numeric, case, cast, func, select, update
from sqlalchemy.orm import Session

from ragcore.db import insert_for, utcnow
from ragcore.db.models import Message, UserStatistics


def count_new(session: Session, user_id: str) -> dict[str, Any]:
    """Claim the user's uncounted messages and add them to the counters; returns the statistics,
    or only `counted` 0 when there was nothing new (archived messages count: they happened).

    On the session's connection, past the ORM: a read for anything new, the claim (one UPDATE:
    concurrent runs claim disjoint rows, each counted once), then one upsert that adds the claimed
    messages to the user's row in the database (atomic, whoever else adds) and returns it. A run
    that finds nothing new writes nothing: the run that claimed those messages counted them.
    """
    connection = session.connection()
    uncounted = (Message.user_id == user_id, Message.stats_counted_at.is_(None))
    # Most runs find nothing new (one run counts all of a user's messages of a relay batch): a
    # read says so without the UPDATE, which takes SQLite's one write lock even to change nothing.
    if connection.scalar(select(Message.id).where(*uncounted).limit(1)) is None:
        return {"user_id": user_id, "counted": 0}
    now = utcnow()
    claimed = (
        connection.execute(
            update(Message)
            .where(*uncounted)
            .values(stats_counted_at=now)
            .returning(Message.tokens_used, Message.processing_time_ms, Message.created_at)
        )
        .tuples()
        .all()
    )
    if not claimed:
        return {"user_id": user_id, "counted": 0}
    queries = len(claimed)
    milliseconds = sum(ms for _, ms, _ in claimed)
    insert = insert_for(session)(UserStatistics).values(
        user_id=user_id,
        total_queries=queries,
        total_tokens=sum(tokens for tokens, _, _ in claimed),
        total_processing_time_ms=milliseconds,
        avg_processing_time_ms=round(milliseconds / queries, 3),
        last_query_at=max(created for _, _, created in claimed),
        updated_at=now,
    )
    new = insert.excluded
    total_queries = UserStatistics.total_queries + new.total_queries
    total_ms = UserStatistics.total_processing_time_ms + new.total_processing_time_ms
    last = UserStatistics.last_query_at
    row = connection.execute(
        insert.on_conflict_do_update(
            index_elements=["user_id"],
            set_={
                "total_queries": total_queries,
                "total_tokens": UserStatistics.total_tokens + new.total_tokens,
                "total_processing_time_ms": total_ms,
                # NUMERIC: PostgreSQL rounds to digits only a numeric (SQLite takes any number).
                "avg_processing_time_ms": func.round(cast(total_ms / total_queries, Numeric), 3),
                "last_query_at": case(
                    (last.is_(None) | (last < new.last_query_at), new.last_query_at), else_=last
                ),
                "updated_at": new.updated_at,
            },
        ).returning(
            UserStatistics.total_queries,
            UserStatistics.total_tokens,
            UserStatistics.avg_processing_time_ms,
            UserStatistics.last_query_at,
        )
    ).one()
    return {
        "user_id": user_id,
        "total_queries": row.total_queries,
        "total_tokens": row.total_tokens,
        "avg_processing_time_ms": float(row.avg_processing_time_ms),
        "last_query_at": row.last_query_at.isoformat() if row.last_query_at else None,
        "updated_at": now.isoformat(),
        "counted": queries,
    }
