"""Where a failed delivery stands: the closed set of `failed_deliveries.status`."""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    #: failed on a retryable error; Beat's re-driver sends it again on its backoff. A re-drive in
    #: flight (`redrive_task_id`) keeps it waiting until its outcome is known.
    WAITING = "waiting"
    #: refused (a 4xx) or out of re-drive time: an operator's call
    FAILED = "failed"
    #: sent again (by the re-driver or an operator) as `redrive_task_id`, which delivered it
    REDRIVEN = "redriven"
    #: an operator chose never to send it; kept for the record
    DISCARDED = "discarded"


#: Still to be sent: what an operator may re-drive or discard.
UNRESOLVED: frozenset[DeliveryStatus] = frozenset({DeliveryStatus.FAILED, DeliveryStatus.WAITING})
#: The only statuses that retention may delete: an operator (or the automatic re-drive) has dealt
#: with them. Any other status, including ones added later, means still failed or waiting and is
#: kept — a new resolved status must be added here on purpose.
RESOLVED: frozenset[DeliveryStatus] = frozenset({DeliveryStatus.REDRIVEN, DeliveryStatus.DISCARDED})
