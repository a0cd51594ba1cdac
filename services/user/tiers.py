"""Tiers from settings: the highest tier whose 30-day query threshold the user reached; it sets the
daily limit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ragcore.db.models import Message, User
from ragcore.query.limits import ensure_user
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


def apply_tier(
    session: Session, user_id: str, tiers: TierSettings, now: datetime
) -> dict[str, Any]:
    """Count the user's queries of the last 30 days, store the tier they reach and its daily
    limit."""
    queries = (
        session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.user_id == user_id, Message.created_at >= now - WINDOW)
        )
        or 0
    )
    tier = tier_for(queries, tiers.thresholds)
    ensure_user(session, user_id, tiers)
    user = session.get(User, user_id, with_for_update=True)
    assert user is not None
    previous = user.tier
    user.tier, user.daily_limit = tier, tiers.daily_limits[tier]
    return {
        "user_id": user_id,
        "queries_30d": queries,
        "tier": tier,
        "previous_tier": previous,
        "daily_limit": user.daily_limit,
    }
