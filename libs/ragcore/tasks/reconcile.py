"""Reconciliation: the ledger publishes again what the broker lost.

Every task is in the ledger before its message exists; Redis may still lose the message (a restart
without persistence, a failover to a replica that lagged, a FLUSHALL). Each round looks at a bounded
batch of the ledger's unfinished tasks (PENDING, RETRY, STARTED) sent more than the grace period
ago, oldest first, a cursor walking on from round to round (wrapping at the end), and asks the
broker about each id: waiting in its queue (ragcore.broker.held), delivered and not acknowledged
(`unacked`), noted by a live worker as running, reserved or scheduled, or STARTED on a worker whose
lapse the lost-worker recovery has not passed yet. Whatever none of them holds is lost: published
again from the ledger (same id, same arguments, its contract's queue), or ended for good when it
cannot run again (its contract is gone, its arguments no longer validate, it was revoked), or
completed from the result backend when it ended there and the ledger missed the end.

Two reconcilers never act on one task twice: each act is a conditional update of the row (its state
and last reconciliation as read), and only the one whose update matched goes on. A Redis that just
came back empty is given one heartbeat lapse before any round acts, so that live workers have
announced themselves and noted what they hold again: a task a live worker holds is never sent again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import redis
from celery import Celery
from pydantic import ValidationError
from sqlalchemy import select, tuple_, update

from ragcore.broker import heartbeats, held
from ragcore.broker.client import broker_client
from ragcore.db import Sessions, rows_affected, session_scope, utcnow
from ragcore.db.models import TaskRecord
from ragcore.settings import Settings
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.states import FINISHED, UNFINISHED, TaskState

log = logging.getLogger(__name__)

#: Re-publishes and ends per "queue|reason", for /metrics (a counter: it restarts with Redis).
COUNTS_KEY = "ragcore:reconciled"
_CURSOR_KEY = "ragcore:reconcile:cursor"
#: When this Redis was first seen by a reconciler: missing after Redis lost its data.
_SINCE_KEY = "ragcore:reconcile:since"


class Reason(StrEnum):
    #: Waiting (PENDING, RETRY), yet in no queue and on no worker: published again.
    LOST = "lost"
    #: STARTED on a worker that is gone, its message gone too: published again.
    WORKER_GONE = "worker_gone"
    #: The result backend holds its end, the ledger missed it: the row takes it.
    FINISHED = "finished"
    #: No contract has its name any more: FAILURE.
    CONTRACT_GONE = "contract_gone"
    #: Its arguments fail its contract now: FAILURE.
    INVALID_ARGUMENTS = "invalid_arguments"
    #: Revoked while it ran, and its run is gone: REVOKED.
    REVOKED = "revoked"


@dataclass(frozen=True)
class Candidate:
    task_id: str
    name: str | None
    queue: str | None
    state: str
    kwargs: dict[str, Any]
    worker: str | None
    revoked: bool
    sent_at: datetime
    reconciled_at: datetime | None


@dataclass
class RoundResult:
    checked: int = 0
    held: int = 0
    #: (queue, reason) -> tasks
    acted: Counter[tuple[str, Reason]] = field(default_factory=Counter)
    #: Redis came back empty moments ago: nothing decided this round.
    settling: bool = False


def settle_seconds(settings: Settings) -> float:
    """How long a Redis that lost its data is left for live workers to beat and note again."""
    return heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds) + (
        settings.workers.heartbeat_seconds
    )


def reconcile_round(
    app: Celery,
    settings: Settings,
    *,
    client: redis.Redis | None = None,
    sessions: Sessions = session_scope,
) -> RoundResult:
    """One round (see the module docstring)."""
    client = client or broker_client(settings.redis)
    now = time.time()
    client.set(_SINCE_KEY, now, nx=True)
    if now - float(client.get(_SINCE_KEY) or now) < settle_seconds(settings):
        return RoundResult(settling=True)
    for q in contracts.Queue:
        held.forget_drained(client, q.value, now - settings.reconcile.grace_seconds)
    cutoff = utcnow() - timedelta(seconds=settings.reconcile.grace_seconds)
    with sessions() as session:
        rows = _candidates(session, cutoff, _cursor(client), settings.reconcile.batch_size)
    if len(rows) < settings.reconcile.batch_size:
        client.delete(_CURSOR_KEY)  # the end of the list: the next round starts again
    else:
        client.set(_CURSOR_KEY, f"{rows[-1].sent_at.isoformat()}|{rows[-1].task_id}")
    result = RoundResult(checked=len(rows))
    # a lapse is judged on the clock heartbeats are stamped on
    view = _BrokerView(app, client, settings, rows, heartbeats.server_time(client))
    for row in rows:
        # Published again within the grace period: its message may still be on its way.
        recent = row.reconciled_at is not None and row.reconciled_at >= cutoff
        if recent or view.holds(row):
            result.held += 1
            continue
        reason = _act(app, row, view.final_state(row), sessions)
        if reason is not None:
            result.acted[(row.queue or "", reason)] += 1
    if result.acted:
        pipe = client.pipeline(transaction=False)
        for (queue, reason), n in result.acted.items():
            pipe.hincrby(COUNTS_KEY, f"{queue}|{reason.value}", n)
        pipe.execute()
        log.warning(
            "reconciled %d task(s) the broker no longer held: %s",
            sum(result.acted.values()),
            {f"{q}/{r.value}": n for (q, r), n in sorted(result.acted.items())},
        )
    return result


def counts(client: redis.Redis) -> dict[tuple[str, str], int]:
    """What the reconcilers did since Redis last lost its data: (queue, reason) -> tasks."""
    raw: dict[bytes, bytes] = client.hgetall(COUNTS_KEY)  # type: ignore[assignment]  # bytes: no decode_responses
    out: dict[tuple[str, str], int] = {}
    for key, value in raw.items():
        queue, _, reason = key.decode().partition("|")
        out[(queue, reason)] = int(value)
    return out


def _cursor(client: redis.Redis) -> tuple[datetime, str] | None:
    raw = client.get(_CURSOR_KEY)
    if not raw:
        return None
    sent_at, _, task_id = raw.decode().partition("|")  # type: ignore[union-attr]  # bytes: no decode_responses
    return datetime.fromisoformat(sent_at), task_id


def _candidates(
    session: Any, cutoff: datetime, cursor: tuple[datetime, str] | None, limit: int
) -> list[Candidate]:
    """Unfinished rows sent before `cutoff`, after `cursor`, oldest first: the partial index
    `ix_task_ledger_unfinished` read in order, so the cost is `limit` rows whatever waits."""
    query = select(
        TaskRecord.task_id,
        TaskRecord.name,
        TaskRecord.queue,
        TaskRecord.state,
        TaskRecord.kwargs,
        TaskRecord.worker,
        TaskRecord.revoked,
        TaskRecord.sent_at,
        TaskRecord.reconciled_at,
    ).where(TaskRecord.state.in_(sorted(UNFINISHED)), TaskRecord.sent_at < cutoff)
    if cursor is not None:
        query = query.where(tuple_(TaskRecord.sent_at, TaskRecord.task_id) > tuple_(*cursor))
    query = query.order_by(TaskRecord.sent_at, TaskRecord.task_id).limit(limit)
    return [Candidate(*row) for row in session.execute(query)]


class _BrokerView:
    """What the broker holds of one batch of candidates, read in a few bounded calls."""

    def __init__(
        self,
        app: Celery,
        client: redis.Redis,
        settings: Settings,
        rows: list[Candidate],
        now: float,
    ) -> None:
        self._app = app
        self._client = client
        self._now = now
        self._lost_after = settings.workers.lost_after_seconds
        by_queue: dict[str, list[str]] = {}
        for row in rows:
            by_queue.setdefault(row.queue or "", []).append(row.task_id)
        self._waiting = {
            task_id
            for queue, ids in by_queue.items()
            if queue
            for task_id in held.waiting(client, queue, ids)
        }
        self._unacked = held.unacked(client) if rows else set()
        ttl = heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
        self._live = heartbeats.live_workers(client, ttl) if rows else set()
        self._noted = held.held_by(client, self._live)
        self._finals: dict[str, dict[str, Any]] = {}

    def holds(self, row: Candidate) -> bool:
        if row.task_id in self._waiting or row.task_id in self._unacked:
            return True
        if row.task_id in self._noted:
            return True
        if row.state == TaskState.STARTED and row.worker:
            if row.worker in self._live:
                return True  # never re-publish what a live worker may still run
            last = heartbeats.last_heartbeat(self._client, row.queue or "", row.worker)
            # Lapsed, not claimed yet: the lost-worker recovery re-queues it from `unacked` first.
            if last is not None and last > self._now - self._lost_after:
                return True
        return False

    def final_state(self, row: Candidate) -> dict[str, Any] | None:
        """The end the result backend holds for `row`, if any (tasks that store a result)."""
        contract = contracts.BY_NAME.get(row.name or "")
        if contract is None or not contract.store_result:
            return None
        backend = self._app.backend
        try:
            raw = backend.get(backend.get_key_for_task(row.task_id))
        except Exception:  # the result backend is another store: unreachable means unknown
            return None
        if not raw:
            return None
        meta: dict[str, Any] = backend.decode_result(raw)
        if meta.get("status") == TaskState.REVOKED and not row.revoked:
            return None  # Celery's cancel of a task on a lost connection (ledger.INTERRUPTED)
        return meta if meta.get("status") in FINISHED else None


def _act(
    app: Celery, row: Candidate, final: dict[str, Any] | None, sessions: Sessions
) -> Reason | None:
    """Publish `row` again or end it; None when another reconciler (or its worker) acted first."""
    contract = contracts.BY_NAME.get(row.name or "")
    if final is not None:
        succeeded = final["status"] == TaskState.SUCCESS
        error = None if succeeded else final.get("result")
        values: dict[str, Any] = {
            "state": final["status"],
            "result": _stored(final.get("result")) if succeeded else None,
            "error": None if error is None else str(error),
            "traceback": final.get("traceback"),
        }
        return _end(row, Reason.FINISHED, values, sessions)
    if contract is None:
        return _end(
            row, Reason.CONTRACT_GONE, _failure(f"no task contract named {row.name!r}"), sessions
        )
    if row.revoked:
        return _end(row, Reason.REVOKED, {"state": TaskState.REVOKED}, sessions)
    try:
        payload = contract.validate(row.kwargs)
    except ValidationError as exc:
        message = f"its arguments no longer fit {contract.name}: {exc}"
        return _end(row, Reason.INVALID_ARGUMENTS, _failure(message), sessions)
    reason = Reason.WORKER_GONE if row.state == TaskState.STARTED else Reason.LOST
    if not _claim(row, reason, {"state": TaskState.PENDING}, sessions):
        return None
    try:
        dispatch.send_again(app, contract, payload, row.task_id)
    except dispatch.PublishFailed as exc:  # the next round after the grace period tries again
        log.warning("could not publish %s again: %s", row.task_id, exc)
        return None
    return reason


def _failure(message: str) -> dict[str, Any]:
    return {"state": TaskState.FAILURE, "error": f"ReconcileError: {message}"}


def _stored(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else {"value": result}


def _end(
    row: Candidate, reason: Reason, values: dict[str, Any], sessions: Sessions
) -> Reason | None:
    ended = _claim(row, reason, {**values, "finished_at": utcnow()}, sessions)
    return reason if ended else None


def _claim(row: Candidate, reason: Reason, values: dict[str, Any], sessions: Sessions) -> bool:
    """Update `row` if nobody changed it since it was read (another reconciler, its worker)."""
    with sessions() as session:
        changed = rows_affected(
            session,
            update(TaskRecord)
            .where(
                TaskRecord.task_id == row.task_id,
                TaskRecord.state == row.state,
                TaskRecord.reconciled_at.is_not_distinct_from(row.reconciled_at),
            )
            .values(**values, reconciled_at=utcnow(), reconcile_reason=reason.value)
            .execution_options(synchronize_session=False),
        )
    return changed == 1
