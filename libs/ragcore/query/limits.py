"""Per-user daily query limits: a counter per user that resets at midnight in the configured zone.

A new user starts in the default tier with that tier's limit. The window resets twice over: Beat's
`reset_all_daily_limits` at 00:00, and lazily here when a user's `limit_reset_at` has passed, so a
missed Beat run never locks anyone out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, case, or_, select, update
from sqlalchemy.orm import Session

from ragcore.db import insert_for, rows_affected
from ragcore.db.models import User
from ragcore.settings import Settings, TierSettings


class LimitExceeded(Exception):
    """The user has used every query of the current window."""

    def __init__(self, user_id: str, daily_limit: int, resets_at: datetime) -> None:
        super().__init__(
            f"user {user_id!r} reached the daily limit of {daily_limit} queries; "
            f"it resets at {resets_at.isoformat()}"
        )
        self.daily_limit = daily_limit
        self.resets_at = resets_at


@dataclass(frozen=True)
class Usage:
    daily_limit: int
    queries_today: int
    resets_at: datetime


def next_reset(now: datetime, timezone: str) -> datetime:
    """The next midnight in `timezone` strictly after `now` (when Beat's daily reset runs)."""
    zone = ZoneInfo(timezone)
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0), tzinfo=zone).astimezone(now.tzinfo)


def _expired(now: datetime) -> ColumnElement[bool]:
    return or_(User.limit_reset_at.is_(None), User.limit_reset_at <= now)


def usage(session: Session, user_id: str, settings: Settings, now: datetime) -> Usage:
    """The user's standing in the current window (a user never seen has used nothing)."""
    user = session.get(User, user_id)
    if user is None:
        return Usage(
            settings.tiers.daily_limits[settings.tiers.default],
            0,
            next_reset(now, settings.timezone),
        )
    if user.limit_reset_at is None or user.limit_reset_at <= now:
        return Usage(user.daily_limit, 0, next_reset(now, settings.timezone))
    return Usage(user.daily_limit, user.queries_today, user.limit_reset_at)


def check(session: Session, user_id: str, settings: Settings, now: datetime) -> None:
    """Refuse early, before any work, a user with no query left (`consume` is the atomic check)."""
    current = usage(session, user_id, settings, now)
    if current.queries_today >= current.daily_limit:
        raise LimitExceeded(user_id, current.daily_limit, current.resets_at)


def ensure_user(session: Session, user_id: str, tiers: TierSettings) -> None:
    """Create the user in the default tier with that tier's limit, unless it exists."""
    insert = insert_for(session)
    tier = tiers.default
    session.execute(
        insert(User)
        .values(
            user_id=user_id,
            tier=tier,
            daily_limit=tiers.daily_limits[tier],
            queries_today=0,
        )
        .on_conflict_do_nothing(index_elements=["user_id"])
    )


def consume(session: Session, user_id: str, settings: Settings, now: datetime) -> None:
    """Count one query in the caller's transaction, or raise LimitExceeded.

    One conditional UPDATE, so concurrent queries of one user can never overshoot the limit.
    """
    ensure_user(session, user_id, settings.tiers)
    expired = _expired(now)
    counted = rows_affected(
        session,
        update(User)
        .where(User.user_id == user_id, or_(expired, User.queries_today < User.daily_limit))
        .values(
            queries_today=case((expired, 1), else_=User.queries_today + 1),
            limit_reset_at=case(
                (expired, next_reset(now, settings.timezone)), else_=User.limit_reset_at
            ),
        )
        .execution_options(synchronize_session=False),
    )
    if counted == 0:
        limit, resets_at = session.execute(
            select(User.daily_limit, User.limit_reset_at).where(User.user_id == user_id)
        ).one()
        raise LimitExceeded(user_id, limit, resets_at or next_reset(now, settings.timezone))


def reset_user(session: Session, user_id: str, settings: Settings, now: datetime) -> int:
    """Give one user a fresh window; returns 1, or 0 for an unknown user."""
    return rows_affected(
        session,
        update(User)
        .where(User.user_id == user_id)
        .values(queries_today=0, limit_reset_at=next_reset(now, settings.timezone))
        .execution_options(synchronize_session=False),
    )


def reset_all(session: Session, settings: Settings, now: datetime) -> int:
    """Give every user who used a query a fresh window: one set-based UPDATE, not a loop."""
    return rows_affected(
        session,
        update(User)
        .where(User.queries_today != 0)
        .values(queries_today=0, limit_reset_at=next_reset(now, settings.timezone))
        .execution_options(synchronize_session=False),
    )
