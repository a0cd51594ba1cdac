"""The task ledger: a durable record of every task sent through the contracts or received by a
worker, kept current by the workers' signals, so status outlives Redis results and unknown ids are
told apart from pending ones.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from celery import Task, signals
from sqlalchemy import Table, bindparam, func, select, tuple_, update
from sqlalchemy.orm import Session

from ragcore.broker import held
from ragcore.broker import queue_stats as queues
from ragcore.db import insert_for, session_scope, utcnow
from ragcore.db.models import TaskRecord
from ragcore.db.outage import DATABASE_ERRORS, Outage
from ragcore.tasks import contracts
from ragcore.tasks.backlog import Backlog
from ragcore.tasks.contracts import TaskContract

log = logging.getLogger(__name__)

#: Celery keeps this many revoked ids in a worker's memory; a starting worker loads as many.
MAX_REVOKED_IDS = 50_000
#: A message header of publishers that recorded their tasks themselves (the publisher signal skips
#: them).
RECORDED_HEADER = "ragcore_recorded"
#: A message header of a publish the ledger could not record (the database was down): the worker
#: that receives it records it, as it does another client's task.
UNRECORDED_HEADER = "ragcore_unrecorded"
#: How often a ledger writer tries a database that is down again.
RETRY_SECONDS = 2.0


def record_sent(
    session: Session, task_id: str, contract: TaskContract, kwargs: dict[str, Any]
) -> None:
    session.add(
        TaskRecord(
            task_id=task_id,
            name=contract.name,
            queue=contract.queue.value,
            state="PENDING",
            kwargs=kwargs,
        )
    )


def record_sent_many(
    session: Session, tasks: Sequence[tuple[str, TaskContract, dict[str, Any]]]
) -> None:
    """Record tasks about to be sent in one statement; an id already recorded (sent again) is kept
    as it is."""
    rows = [
        {
            "task_id": task_id,
            "name": c.name,
            "queue": c.queue.value,
            "state": "PENDING",
            "kwargs": kwargs,
        }
        for task_id, c, kwargs in tasks
    ]
    session.execute(
        insert_for(session)(TaskRecord).on_conflict_do_nothing(index_elements=["task_id"]), rows
    )


def get(session: Session, task_id: str) -> TaskRecord | None:
    return session.get(TaskRecord, task_id)


def _identity(name: str, delivery_info: dict[str, Any] | None) -> dict[str, str]:
    """Name and queue of a task a worker holds: the contract's queue, else the one it came from."""
    contract = contracts.BY_NAME.get(name)
    queue = (
        contract.queue.value if contract else str((delivery_info or {}).get("routing_key") or "")
    )
    # the columns' sizes: another client may send anything
    return {
        "name": name[:128],
        "queue": queue[:32],
    }


def record_received(request: Any) -> None:
    """Record a task that another client sent (Celery's CLI, Flower, a script) when a worker
    receives it.

    Ragcore's publishers record their tasks when they send them and stamp the message; an unstamped
    message is another client's. Its row is written at once rather than through the batched writer:
    a pool process may start the task right after and must find the row to update.
    """
    if request.request_dict.get(queues.SENT_AT_HEADER) is not None and not request.request_dict.get(
        UNRECORDED_HEADER
    ):
        return
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    row = {
        "task_id": request.id,
        "state": "PENDING",
        "kwargs": kwargs,
        **_identity(request.name, request.delivery_info),
    }
    try:
        with session_scope() as session:
            session.execute(
                insert_for(session)(TaskRecord).on_conflict_do_nothing(index_elements=["task_id"]),
                [row],
            )
    except Exception:  # the ledger must never keep a task from running
        log.exception("task ledger insert failed", extra={"ledger_task_id": request.id})


class _Writer:
    """A worker process's ledger updates of the tasks that keep no result in Redis, written by one
    thread in batches.

    Such a task (a delivery, sent per query) is short and frequent: its bookkeeping must not cost it
    database round trips. The signal receivers queue the update and return; the thread writes what
    queued within `linger` seconds of the first update, merged per task (STARTED and SUCCESS become
    one row update), in one transaction. One queue and one thread keep each task's updates in order.
    A process flushes before it exits; a SIGKILL loses at most the last `linger` seconds of updates
    (the worker's next life still re-queues what it was running: see ragcore.worker.recovery).

    While the database is down the updates wait in a bounded backlog (ragcore.tasks.backlog), tried
    again every `RETRY_SECONDS`, and the outage is logged once as it begins and once as it ends.
    Every update of the process goes through the backlog while it is not empty, so none overtakes
    an older one.
    """

    def __init__(self, linger: float = 0.2) -> None:
        self._linger = linger
        self._hurry = threading.Event()  # set by flush(): write without lingering
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | threading.Event] = (
            queue.SimpleQueue()
        )
        self._backlog = Backlog()
        self._outage = Outage("task ledger writer")

    @property
    def backlogged(self) -> bool:
        return self._pid == os.getpid() and (len(self._backlog) > 0 or self._outage.ongoing)

    def put(self, task_id: str | None, values: dict[str, Any]) -> None:
        if task_id:
            self._started().put((task_id, values))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until what was queued before the call is written."""
        if self._pid != os.getpid():
            return  # nothing queued in this process
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        done.wait(timeout)

    def _started(self) -> queue.SimpleQueue[tuple[str, dict[str, Any]] | threading.Event]:
        # first use in this process (a prefork child inherits no thread)
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    self._hurry = threading.Event()
                    self._backlog = Backlog()
                    self._outage = Outage("task ledger writer")
                    threading.Thread(target=self._run, name="ledger-writer", daemon=True).start()
                    self._pid = os.getpid()
        return self._queue

    def _run(self) -> None:
        while True:
            try:
                # With a backlog, wake up to try the database again even if nothing new comes.
                items = [self._queue.get(timeout=RETRY_SECONDS if len(self._backlog) else None)]
            except queue.Empty:
                items = []
            # One wait for the whole batch, not a wake-up per update (each would take the GIL from
            # the task).
            self._hurry.wait(self._linger)
            self._hurry.clear()
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            updates = [item for item in items if not isinstance(item, threading.Event)]
            self._backlog.add(updates)
            if len(self._backlog):
                self._write_backlog()
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()

    def _write_backlog(self) -> None:
        try:
            _write(self._backlog.items())
        except DATABASE_ERRORS as exc:
            self._outage.failed(exc)
            return
        except Exception:  # the ledger must never fail a task (nor stop the writer thread)
            log.exception(
                "task ledger update failed",
                extra={"ledger_task_ids": [task_id for task_id, _ in self._backlog.items()[:20]]},
            )
        written, dropped = self._backlog.clear()
        self._outage.over(ledger_rows_written=written, updates_dropped=dropped)


_IDENTITY = frozenset(("name", "queue"))


def _write(updates: list[tuple[str, dict[str, Any]]]) -> None:
    merged: dict[str, dict[str, Any]] = {}
    for task_id, values in updates:
        merged.setdefault(task_id, {}).update(values)
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for task_id, values in merged.items():
        shapes.setdefault(tuple(sorted(values)), []).append({"_task_id": task_id, **values})
    table = cast(Table, TaskRecord.__table__)  # declared on the model, so a Table
    with session_scope() as session:
        for columns, rows in shapes.items():  # one executemany per set of columns
            # Name and queue only fill what is unknown (an id revoked before any worker received
            # it).
            values = {
                c: func.coalesce(table.c[c], bindparam(c)) if c in _IDENTITY else bindparam(c)
                for c in columns
            }
            statement = update(table).where(table.c.task_id == bindparam("_task_id")).values(values)
            session.execute(statement, rows)


_writer = _Writer()


def _write_now(task_id: str, values: dict[str, Any]) -> None:
    """Written at once; while the database is down (or older updates still wait) kept by the writer
    in order instead."""
    if not _writer.backlogged:
        try:
            _write([(task_id, values)])
            return
        except DATABASE_ERRORS:
            pass  # the writer keeps it, and says once that the database is down
        except Exception:  # the ledger must never fail a task
            log.exception("task ledger update failed", extra={"ledger_task_ids": [task_id]})
            return
    _writer.put(task_id, values)


def _update(task: Any, task_id: str | None, **values: Any) -> None:
    """Batched for tasks that keep no result in Redis; written at once for the others, so that what
    the result backend shows (STARTED, SUCCESS...) the ledger shows too (status reads both)."""
    contract = contracts.BY_NAME.get(getattr(task, "name", None) or "")
    if contract is not None and not contract.store_result:
        _writer.put(task_id, values)
    elif task_id:
        _write_now(task_id, values)


def flush() -> None:
    """Write this process's queued ledger updates now (before it exits)."""
    _writer.flush()


def set_progress(task_id: str, progress: dict[str, Any]) -> None:
    # The state stays STARTED: orphan recovery looks for STARTED tasks; status shows PROGRESS.
    _write_now(task_id, {"progress": progress})


def handed_back(task_id: str, progress: dict[str, Any]) -> None:
    """A running task gave its message back to the queue (its worker stops): it waits again."""
    _write_now(task_id, {"state": "PENDING", "progress": progress})


def report_progress(task: Task, done: int, total: int, **extra: Any) -> None:
    """Progress where status reads it: the result backend (live) and the ledger (durable)."""
    meta = {"done": done, "total": total, **extra}
    task.update_state(state="PROGRESS", meta=meta)
    set_progress(task.request.id, meta)


# -- revocation ---------------------------------------------------------------------------------


def mark_revoked(record: TaskRecord) -> None:
    """Persist a revocation: a waiting task is revoked now; a running one keeps its state until it
    ends."""
    record.revoked = True
    if record.state in ("PENDING", "RETRY"):
        record.state = "REVOKED"
        record.finished_at = utcnow()


def record_revoked_unseen(session: Session, task_id: str) -> None:
    """Revoke an id no worker has received yet; the worker that discards it fills in name and
    queue."""
    row: dict[str, Any] = {
        "task_id": task_id,
        "name": None,
        "queue": None,
        "state": "REVOKED",
        "kwargs": {},
        "revoked": True,
        "finished_at": utcnow(),
    }
    session.execute(
        insert_for(session)(TaskRecord).on_conflict_do_nothing(index_elements=["task_id"]), [row]
    )


def revoked_ids(session: Session, limit: int = MAX_REVOKED_IDS) -> list[str]:
    """The most recently sent revoked tasks that may still wait in a queue (for a starting
    worker)."""
    query = (
        select(TaskRecord.task_id)
        .where(TaskRecord.revoked.is_(True), TaskRecord.state.not_in(("SUCCESS", "FAILURE")))
        .order_by(TaskRecord.sent_at.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


# -- history ------------------------------------------------------------------------------------

#: A history cursor: the last row's sent_at in microseconds since the epoch, ".", its task id. A
#: shape the OpenAPI document can state whole: every string it admits is a cursor the ledger can use
#: (16 digits reach the year 2286).
CURSOR_PATTERN = r"^[0-9]{1,16}\.[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(record: TaskRecord) -> str:
    return f"{(record.sent_at - _EPOCH) // timedelta(microseconds=1)}.{record.task_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (sent_at, task_id) a cursor points after; ValueError for anything else."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValueError("invalid cursor")
    micros, _, task_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), task_id


def history(
    session: Session,
    *,
    name: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[TaskRecord], str | None]:
    """Tasks newest first, filtered; the cursor of the next page, or None on the last one."""
    query = select(TaskRecord)
    if name is not None:
        query = query.where(TaskRecord.name == name)
    if state == "PROGRESS":  # the ledger keeps STARTED (see set_progress) and the progress itself
        query = query.where(TaskRecord.state == "STARTED", TaskRecord.progress.is_not(None))
    elif state is not None:
        query = query.where(TaskRecord.state == state)
    if since is not None:
        query = query.where(TaskRecord.sent_at >= since)
    if cursor is not None:
        sent_at, task_id = decode_cursor(cursor)
        # A row comparison: the index on (…, sent_at, task_id) starts right after the cursor.
        after = tuple_(TaskRecord.sent_at, TaskRecord.task_id) < tuple_(sent_at, task_id)
        query = query.where(after)
    rows = list(
        session.scalars(
            query.order_by(TaskRecord.sent_at.desc(), TaskRecord.task_id.desc()).limit(limit + 1)
        )
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


# -- aggregates for metrics ---------------------------------------------------------------------


def last_success(session: Session, name: str) -> TaskRecord | None:
    """The most recently sent run of task `name` that succeeded (its result, when it finished)."""
    query = (
        select(TaskRecord)
        .where(TaskRecord.name == name, TaskRecord.state == "SUCCESS")
        .order_by(TaskRecord.sent_at.desc())
        .limit(1)
    )
    return session.scalars(query).first()


@dataclass(frozen=True)
class Durations:
    """How long the finished tasks of one name ran: cumulative counts per upper bound, sum,
    count."""

    name: str
    buckets: list[tuple[float, int]]
    total_seconds: float
    count: int


@dataclass(frozen=True)
class Window:
    """The tasks sent since a time: how many per (name, state), and how long the finished ran."""

    counts: list[tuple[str, str, int]]
    durations: list[Durations]


def window(session: Session, since: datetime, bounds: Sequence[float]) -> Window:
    """Counts and run times of the tasks sent since `since`, in one pass over the window.

    On PostgreSQL the pass reads only the (sent_at, task_id) index, which INCLUDEs the columns
    read here; `run_seconds` is written only when a task succeeds or fails.
    """
    run = TaskRecord.run_seconds
    columns = [func.count(run).filter(run <= b) for b in bounds]
    query = (
        select(
            TaskRecord.name,
            TaskRecord.state,
            func.count(),
            func.count(run),
            func.coalesce(func.sum(run), 0.0),
            *columns,
        )
        # Ids revoked before any worker saw them have no name: not a task anyone ran.
        .where(TaskRecord.sent_at >= since, TaskRecord.name.is_not(None))
        .group_by(TaskRecord.name, TaskRecord.state)
    )
    counts: list[tuple[str, str, int]] = []
    runs: dict[str, tuple[int, float, list[int]]] = {}
    for name, state, count, finished, total, *cumulative in session.execute(query):
        counts.append((str(name), state, int(count)))
        if finished:
            before = runs.get(str(name), (0, 0.0, [0] * len(bounds)))
            runs[str(name)] = (
                before[0] + int(finished),
                before[1] + float(total or 0.0),
                [a + int(b) for a, b in zip(before[2], cumulative, strict=False)],
            )
    durations = [
        Durations(name, list(zip(bounds, cumulative, strict=False)), total, count)
        for name, (count, total, cumulative) in runs.items()
    ]
    return Window(counts, durations)


# -- signals ------------------------------------------------------------------------------------


@signals.before_task_publish.connect(weak=False, dispatch_uid="ledger.stamp_sent_at")
def _stamp_sent_at(
    headers: dict[str, Any] | None = None, routing_key: str | None = None, **_: Any
) -> None:
    # Every publisher of contract tasks imports this module (dispatch, reports, Beat, workers): the
    # publish time in the message is what the oldest-waiting-task age of a queue is measured from,
    # and the id joins its queue's waiting set (what the reconciler asks instead of the queue).
    if headers is not None:
        queues.stamp_sent_at(headers)
        held.note_publish(headers, routing_key)


#: When each task running in this process started (perf_counter): its run time is written with
#: its end, in the same update (prerun, success and failure signals run in the same process).
_starts: dict[str, float] = {}


def _run_seconds(task_id: str) -> dict[str, float]:
    start = _starts.pop(task_id, None)
    return {} if start is None else {"run_seconds": time.perf_counter() - start}


def connect_worker_signals() -> None:
    """Keep the ledger current from a worker's task signals."""

    @signals.task_prerun.connect(weak=False, dispatch_uid="ledger.task_prerun")
    def _started(task_id: str, task: Any, **_: Any) -> None:
        _starts[task_id] = time.perf_counter()
        _update(task, task_id, state="STARTED", started_at=utcnow(), worker=task.request.hostname)

    @signals.task_retry.connect(weak=False, dispatch_uid="ledger.task_retry")
    def _retried(sender: Any, request: Any, reason: Any, **_: Any) -> None:
        _starts.pop(request.id, None)  # the next run starts afresh
        _update(sender, request.id, state="RETRY", retries=request.retries + 1, error=str(reason))

    @signals.task_success.connect(weak=False, dispatch_uid="ledger.task_success")
    def _succeeded(sender: Any, result: Any, **_: Any) -> None:
        stored = result if isinstance(result, dict) else {"value": result}
        task_id = sender.request.id
        _update(
            sender,
            task_id,
            state="SUCCESS",
            finished_at=utcnow(),
            result=stored,
            error=None,
            **_run_seconds(task_id),
        )

    @signals.task_failure.connect(weak=False, dispatch_uid="ledger.task_failure")
    def _failed(sender: Any, task_id: str, exception: BaseException, einfo: Any, **_: Any) -> None:
        _update(
            sender,
            task_id,
            state="FAILURE",
            finished_at=utcnow(),
            error=f"{type(exception).__name__}: {exception}",
            traceback=str(einfo),
            **_run_seconds(task_id),
        )

    @signals.task_received.connect(weak=False, dispatch_uid="ledger.task_received")
    def _received(request: Any, **_: Any) -> None:
        record_received(request)

    @signals.task_revoked.connect(weak=False, dispatch_uid="ledger.task_revoked")
    def _revoked(sender: Any, request: Any, **_: Any) -> None:
        # Celery discards a revoked task before `task_received`: an id revoked unseen learns its
        # name here.
        _update(
            sender,
            request.id,
            state="REVOKED",
            finished_at=utcnow(),
            revoked=True,
            **_identity(sender.name, getattr(request, "delivery_info", None)),
        )

    @signals.worker_process_shutdown.connect(
        weak=False, dispatch_uid="ledger.worker_process_shutdown"
    )
    @signals.worker_shutdown.connect(weak=False, dispatch_uid="ledger.worker_shutdown")
    def _flush(**_: Any) -> None:
        flush()


publisher_outage = Outage("task ledger (publishing)")


def connect_publisher_signals() -> None:
    """Record in the ledger every contract task this process publishes (Beat sends without
    `dispatch`)."""

    @signals.before_task_publish.connect(weak=False, dispatch_uid="ledger.before_task_publish")
    def _sent(headers: dict[str, Any], body: Any, **_: Any) -> None:
        task = contracts.BY_NAME.get(headers.get("task", ""))
        if task is None or headers.get(RECORDED_HEADER):
            return
        kwargs = body[1] if isinstance(body, list | tuple) and len(body) > 1 else {}
        try:
            with session_scope() as session:
                record_sent(session, headers["id"], task, kwargs)
        except DATABASE_ERRORS as exc:
            # Sent all the same: the worker that receives it records it.
            headers[UNRECORDED_HEADER] = True
            publisher_outage.failed(exc)
            return
        except Exception:
            log.exception("task ledger insert failed", extra={"ledger_task_id": headers.get("id")})
            return
        publisher_outage.over()
