"""Tasks of the `user` queue: daily limits, statistics and tiers (SPEC §2)."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from ragcore.db import session_scope, utcnow
from ragcore.query import limits
from ragcore.tasks import contracts
from ragcore.tasks.app import app_settings, define_task
from ragcore.tasks.arguments import NoArgs, UserArgs
from services.user import stats, tiers


def reset_user_daily_limit(self: Task, args: UserArgs) -> dict[str, Any]:
    """Give one user a fresh daily window."""
    with session_scope() as session:
        reset = limits.reset_user(session, args.user_id, app_settings(self.app), utcnow())
    return {"user_id": args.user_id, "reset": reset}


def reset_all_daily_limits(self: Task, args: NoArgs) -> dict[str, Any]:
    """Give every user a fresh daily window: one set-based UPDATE."""
    with session_scope() as session:
        return {"reset": limits.reset_all(session, app_settings(self.app), utcnow())}


def update_user_statistics(self: Task, args: UserArgs) -> dict[str, Any]:
    """Add the user's new messages to their statistics (each counted once), and set the tier they
    reach.

    One transaction. A run that finds nothing new (a run for another of the user's messages
    counted this one too, and set the tier after it) stops there: one read, no write."""
    with session_scope() as session:
        result = stats.count_new(session, args.user_id)
        if result["counted"]:
            # The tier follows the 30-day count, which just grew: kept current as queries come in.
            result["tier"] = tiers.set_tier(
                session, args.user_id, app_settings(self.app).tiers, utcnow()
            )
    return result


def calculate_user_tier(self: Task, args: UserArgs) -> dict[str, Any]:
    """Compute the user's tier from the settings' thresholds and store it with its daily limit."""
    with session_scope() as session:
        return tiers.apply_tier(session, args.user_id, app_settings(self.app).tiers, utcnow())


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
    define_task(app, contracts.RESET_USER_DAILY_LIMIT)(reset_user_daily_limit)
    define_task(app, contracts.RESET_ALL_DAILY_LIMITS)(reset_all_daily_limits)
    define_task(app, contracts.UPDATE_USER_STATISTICS)(update_user_statistics)
    define_task(app, contracts.CALCULATE_USER_TIER)(calculate_user_tier)
