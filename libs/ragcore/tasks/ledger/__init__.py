"""The task ledger: a durable record of every task sent through the contracts or received by a
worker, kept current by the workers' signals, so status outlives Redis results and unknown ids are
told apart from pending ones.

- `records`: a task recorded when sent or received, read by id
- `writer`: the batching writer thread of a worker process; progress and hand-backs
- `receivers`: the Celery signal receivers that keep the ledger current
- `revocation`: revocations recorded, and the ids a starting worker loads
- `history`: history pages and their cursors
- `window`: the aggregates behind /metrics
- `snapshot`: those aggregates (and the console's queues picture) as Beat last computed them
"""

from ragcore.tasks.ledger.history import CURSOR_PATTERN, decode_cursor, encode_cursor, history
from ragcore.tasks.ledger.receivers import connect_publisher_signals, connect_worker_signals
from ragcore.tasks.ledger.records import (
    RECORDED_HEADER,
    get,
    record_received,
    record_sent,
    record_sent_many,
)
from ragcore.tasks.ledger.revocation import (
    MAX_REVOKED_IDS,
    record_revoked_unseen,
    revoke,
    revoked_ids,
)
from ragcore.tasks.ledger.window import (
    DURATION_BOUNDS,
    Durations,
    Window,
    last_success,
    window,
)
from ragcore.tasks.ledger.writer import (
    Writer,
    claim_start,
    flush,
    handed_back,
    report_progress,
    set_progress,
    write,
)

__all__ = [
    "CURSOR_PATTERN",
    "DURATION_BOUNDS",
    "MAX_REVOKED_IDS",
    "claim_start",
    "revoke",
    "RECORDED_HEADER",
    "Durations",
    "Window",
    "Writer",
    "connect_publisher_signals",
    "connect_worker_signals",
    "decode_cursor",
    "encode_cursor",
    "flush",
    "get",
    "handed_back",
    "history",
    "last_success",
    "record_received",
    "record_revoked_unseen",
    "record_sent",
    "record_sent_many",
    "report_progress",
    "revoked_ids",
    "set_progress",
    "window",
    "write",
]
