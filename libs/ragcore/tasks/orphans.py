"""`unacked` entries nobody holds, moved back to their queues at the start of every reconciliation
round (ragcore.tasks.reconcile).

Such an entry was delivered more than a lost-worker lapse ago and is listed in no note of a worker
that is not lost (a worker notes what it holds within a tick of receiving it, and again at every
heartbeat, so an older entry that no such note lists is nobody's). The lost-worker recovery does
not reach them: their worker lives on under its own name (restarted, or reconnected after a
failover, its note of them lost) and kombu would redeliver them only after the visibility timeout.
An entry whose task the ledger shows ended, or retried since, is only removed: its acknowledgement
is what got lost. Each move is a transaction watching `unacked`, so two reconcilers never move one
entry twice.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from sqlalchemy import select, update

from ragcore.broker import heartbeats, held
from ragcore.db import Sessions, utcnow
from ragcore.db.models import TaskRecord
from ragcore.tasks.states import FINISHED, UNFINISHED

log = logging.getLogger(__name__)

#: Where the walk through `unacked_index` (by delivery time) goes on from.
_UNACKED_CURSOR_KEY = "ragcore:reconcile:unacked-cursor"


def restore(
    app: Celery,
    client: redis.Redis,
    sessions: Sessions,
    older_than: float,
    batch_size: int,
    *,
    reason: str,
) -> list[str]:
    """Move back to their queues the `unacked` entries nobody holds (see the module docstring),
    delivered before `older_than` (the lost-worker cut-off), and mark their rows reconciled for
    `reason`. Up to `batch_size` per round, a cursor walking the index by delivery time (wrapping
    at the end), so that entries held for long (a long task, a countdown) never hide those behind
    them. Returns the queue of each entry moved back."""
    raw = client.get(_UNACKED_CURSOR_KEY)
    after = float(raw) if raw else None
    old = held.delivered_before(client, older_than, after, batch_size)
    if len(old) < batch_size:
        client.delete(_UNACKED_CURSOR_KEY)
    else:
        client.set(_UNACKED_CURSOR_KEY, repr(old[-1][1]))
    if not old:
        return []
    noted = held.held_by(client, heartbeats.beating_since(client, older_than))
    orphans = [
        d for d in held.deliveries(client, [tag for tag, _ in old]) if d.task_id not in noted
    ]
    if not orphans:
        return []
    with sessions() as session:
        ledger = {
            task_id: (state, retries)
            for task_id, state, retries in session.execute(
                select(TaskRecord.task_id, TaskRecord.state, TaskRecord.retries).where(
                    TaskRecord.task_id.in_({d.task_id for d in orphans})
                )
            )
        }
    restored: list[held.Delivery] = []
    forgotten = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for delivery in orphans:
            state, retries = ledger.get(delivery.task_id, (None, 0))
            if state in FINISHED or retries > delivery.retries:
                held.forget_delivery(client, delivery.tag)
                forgotten += 1
            elif held.move_back(channel, delivery.tag, delivery.task_id):
                restored.append(delivery)
    if forgotten:
        log.info("removed %d `unacked` entries of tasks ended or retried since", forgotten)
    if restored:
        with sessions() as session:
            session.execute(
                update(TaskRecord)
                .where(
                    TaskRecord.task_id.in_({d.task_id for d in restored}),
                    TaskRecord.state.in_(sorted(UNFINISHED)),
                )
                .values(reconciled_at=utcnow(), reconcile_reason=reason)
                .execution_options(synchronize_session=False)
            )
    return [d.queue for d in restored]
