"""Tiers from settings: the highest tier whose 30-day query threshold the user reached; it sets the
daily limit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db import insert_for
from ragcore.db.models import Message, User
from ragcore.settings import TierSettings

WINDOW = timedelta(days=30)


def tier_for(queries: int, thresholds: dict[str, int]) -> str:
    """The tier with the highest threshold not above `queries` (ties: the first listed)."""
    reached = [
        (threshold, -i, tier)
        for i, (tier, threshold) in enumerate(thresholds.items())
        if queries >= threshold
    ]
    if not reached:
        raise ValueError(f"no tier admits {queries} queries; give one tier the threshold 0")
    return max(reached)[2]


def queries_30d(session: Session, user_id: str, now: datetime) -> int:
    """The user's queries of the 30 days before `now` (the index on user and time)."""
    return (
        session.connection().scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.user_id == user_id, Message.created_at >= now - WINDOW)
        )
        or 0
    )


def set_tier(session: Session, user_id: str, tiers: TierSettings, now: datetime) -> str:
    """Store the tier the user's last 30 days reach and its daily limit; returns the tier."""
    tier = tier_for(queries_30d(session, user_id, now), tiers.thresholds)
    _store(session, user_id, tier, tiers)
    return tier


def apply_tier(
    session: Session, user_id: str, tiers: TierSettings, now: datetime
) -> dict[str, Any]:
    """Count the user's queries of the last 30 days, store the tier they reach and its daily
    limit; with the tier before (a user not yet known was in the default tier)."""
    queries = queries_30d(session, user_id, now)
    tier = tier_for(queries, tiers.thresholds)
    previous = session.connection().scalar(select(User.tier).where(User.user_id == user_id))
    _store(session, user_id, tier, tiers)
    return {
        "user_id": user_id,
        "queries_30d": queries,
        "tier": tier,
        "previous_tier": previous or tiers.default,
        "daily_limit": tiers.daily_limits[tier],
    }


def _store(session: Session, user_id: str, tier: str, tiers: TierSettings) -> None:
    """One upsert, past the ORM: creates the user in `tier`, or changes its row only if the tier
    or the limit differ (most runs write nothing)."""
    insert = insert_for(session)(User).values(
        user_id=user_id, tier=tier, daily_limit=tiers.daily_limits[tier], queries_today=0
    )
    new = insert.excluded
    session.connection().execute(
        insert.on_conflict_do_update(
            index_elements=["user_id"],
            set_={"tier": new.tier, "daily_limit": new.daily_limit},
            where=(User.tier != new.tier) | (User.daily_limit != new.daily_limit),
        )
    )
