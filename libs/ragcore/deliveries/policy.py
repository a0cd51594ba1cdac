"""The re-drive policy: when a waiting delivery goes out again, and for how long it may wait."""

from __future__ import annotations

from datetime import datetime, timedelta

from ragcore.settings import Settings


def next_attempt(settings: Settings, waiting_since: datetime, now: datetime) -> datetime:
    """When a waiting delivery is tried again: after as long as it has waited so far (so the delay
    doubles with each failure), at least the base and at most the cap."""
    waited = (now - waiting_since).total_seconds()
    delay = min(
        settings.delivery_redrive_max_backoff_seconds,
        max(settings.delivery_redrive_base_seconds, waited),
    )
    return now + timedelta(seconds=delay)


def window_start(settings: Settings, now: datetime) -> datetime:
    """A delivery waiting since this moment or before is out of re-drive time."""
    return now - timedelta(seconds=settings.delivery_redrive_window_seconds)


def within_window(settings: Settings, waiting_since: datetime, now: datetime) -> bool:
    return waiting_since > window_start(settings, now)
