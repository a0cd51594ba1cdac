"""The re-drive policy: when a waiting delivery goes out again, and for how long it may wait."""

from __future__ import annotations

from datetime import datetime, timedelta

from ragcore.settings import DeliverySettings


def next_attempt(policy: DeliverySettings, waiting_since: datetime, now: datetime) -> datetime:
    """When a waiting delivery is tried again: after as long as it has waited so far (so the delay
    doubles with each failure), at least the base and at most the cap."""
    waited = (now - waiting_since).total_seconds()
    delay = min(
        policy.max_backoff_seconds,
        max(policy.base_seconds, waited),
    )
    return now + timedelta(seconds=delay)


def window_start(policy: DeliverySettings, now: datetime) -> datetime:
    """A delivery waiting since this moment or before is out of re-drive time."""
    return now - timedelta(seconds=policy.window_seconds)


def within_window(policy: DeliverySettings, waiting_since: datetime, now: datetime) -> bool:
    return waiting_since > window_start(policy, now)
