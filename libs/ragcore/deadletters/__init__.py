"""Dead letters: messages a worker cannot run (undecodable, an unknown task, arguments that fail
the contract), taken off their queue and kept in the database for an operator, so a worker never
stops on them. The worker's hooks are in `ragcore.deadletters.consumer`."""

from ragcore.deadletters.store import (
    BODY_LIMIT,
    Poison,
    Reason,
    Totals,
    discard,
    get,
    page,
    record,
    totals,
)
from ragcore.deadletters.transport import poison_received, transport_for

__all__ = [
    "BODY_LIMIT",
    "Poison",
    "Reason",
    "Totals",
    "discard",
    "get",
    "page",
    "poison_received",
    "record",
    "totals",
    "transport_for",
]
