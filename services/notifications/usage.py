"""Usage per user over one period, computed from the messages table (so a re-run reports the same)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ragcore.db.models import Message
from sqlalchemy import func, select
from sqlalchemy.orm import Session

HOUR = timedelta(hours=1)


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def last_complete_hour(now: datetime) -> datetime:
    """The start of the last hour that has fully passed at `now`."""
    return hour_start(now) - HOUR


def usage_report(session: Session, start: datetime, end: datetime) -> dict[str, Any]:
    """SPEC §5's usage-statistics body for [start, end): one entry per user who queried, by user id."""
    rows = session.execute(
        select(
            Message.user_id,
            func.count(),
            func.coalesce(func.sum(Message.tokens_used), 0),
            func.coalesce(func.avg(Message.processing_time_ms), 0.0),
        )
        .where(Message.created_at >= start, Message.created_at < end)
        .group_by(Message.user_id)
        .order_by(Message.user_id)
    ).all()
    return {
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "users": [
            {"user_id": user_id, "queries": int(queries), "tokens_used": int(tokens), "avg_processing_time_ms": round(float(avg), 3)}
            for user_id, queries, tokens, avg in rows
        ],
    }
