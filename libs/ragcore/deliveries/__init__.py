"""Deliveries to neighbours (Users): how they are sent through the breaker, recorded when they fail,
re-driven on their backoff by Beat, and what an operator asks of them. "Where is a delivery
retried" is answered here.

- `status`: `DeliveryStatus`, the closed set of a failed delivery's states
- `policy`: when a waiting delivery goes out again and for how long (backoff, window)
- `sending`: `deliver`, a task's send through the breaker; `DeliveryDeferred`
- `recording`: a failure recorded once, a failed re-drive rescheduled
- `redriver`: `redrive_due` and Beat's `Redriver` thread; `REDRIVE_HEADER`
- `admin`: listing, re-driving and discarding for the API; the backlog for `/metrics`
"""

from ragcore.deliveries.admin import (
    DeliveryCriteria,
    DeliveryNotFound,
    NotRedrivable,
    backlog,
    discard_matching,
    failed_count,
    page,
    redrive_matching,
    redrive_one,
)
from ragcore.deliveries.policy import next_attempt, window_start, within_window
from ragcore.deliveries.recording import describe, record, reschedule
from ragcore.deliveries.redriver import REDRIVE_HEADER, Redriver, redrive_due, release_waiting
from ragcore.deliveries.sending import DeliveryDeferred, deliver
from ragcore.deliveries.status import RESOLVED, UNRESOLVED, DeliveryStatus

__all__ = [
    "REDRIVE_HEADER",
    "RESOLVED",
    "UNRESOLVED",
    "DeliveryCriteria",
    "DeliveryDeferred",
    "DeliveryNotFound",
    "DeliveryStatus",
    "NotRedrivable",
    "Redriver",
    "backlog",
    "deliver",
    "failed_count",
    "describe",
    "discard_matching",
    "next_attempt",
    "page",
    "record",
    "redrive_due",
    "redrive_matching",
    "redrive_one",
    "release_waiting",
    "reschedule",
    "window_start",
    "within_window",
]
