"""Usage per user over one period, computed from the messages table (so a re-run reports the
same)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db import insert_for, utcnow
from ragcore.db.models import Message, UsageReport

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
#: An outage longer than this is caught up for its last week only.
MAX_CATCH_UP_HOURS = 7 * 24


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def latest_reportable_hour(now: datetime, lag: timedelta) -> datetime:
    """The start of the newest hour that ended at least `lag` ago."""
    return hour_start(now - lag) - HOUR


def due_periods(session: Session, latest: datetime) -> list[datetime]:
    """Hours to report, oldest first: every one after the last recorded, up to `latest` (only it at
    first)."""
    last = session.scalar(select(func.max(UsageReport.period_start)))
    if last is None:
        return [latest]
    first = last + HOUR
    oldest = latest - (MAX_CATCH_UP_HOURS - 1) * HOUR
    if first < oldest:
        log.warning(
            "usage of %s to %s is not reported: older than the catch-up window",
            first.isoformat(),
            oldest.isoformat(),
        )
        first = oldest
    return (
        [first + i * HOUR for i in range(int((latest - first) / HOUR) + 1)]
        if first <= latest
        else []
    )


def is_recorded(session: Session, start: datetime) -> bool:
    return session.get(UsageReport, start) is not None


def revision_for(session: Session, start: datetime, digest: str) -> int:
    """The revision to send the hour's numbers (of `digest`) under: the recorded one while they are
    the numbers recorded, the next one once a recomputation changed them (an unknown digest, from
    before revision 0011, counts as changed)."""
    recorded = session.get(UsageReport, start)
    if recorded is None:
        return 0
    return recorded.revision if recorded.digest == digest else recorded.revision + 1


def record(session: Session, start: datetime, outcome: str, revision: int, digest: str) -> None:
    """Note the hour as done with: Users accepted it, or refused it for good, under `revision`."""
    statement = insert_for(session)(UsageReport).values(
        period_start=start, outcome=outcome, reported_at=utcnow(), revision=revision, digest=digest
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["period_start"],
            set_={
                "outcome": outcome,
                "reported_at": statement.excluded.reported_at,
                "revision": revision,
                "digest": digest,
            },
        )
    )


def usage_report(session: Session, start: datetime, end: datetime) -> dict[str, Any]:
    """SPEC §5's usage-statistics body for [start, end): one entry per user who queried, by user
    id."""
    rows = (
        session.execute(
            select(
                Message.user_id,
                func.count(),
                func.coalesce(func.sum(Message.tokens_used), 0),
                func.coalesce(func.avg(Message.processing_time_ms), 0.0),
            )
            .where(Message.created_at >= start, Message.created_at < end)
            .group_by(Message.user_id)
            .order_by(Message.user_id)
        )
        .tuples()
        .all()
    )
    return {
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "users": [
            {
                "user_id": user_id,
                "queries": int(queries),
                "tokens_used": int(tokens),
                "avg_processing_time_ms": round(float(avg), 3),
            }
            for user_id, queries, tokens, avg in rows
        ],
    }
