"""The ledger's updates as workers make them: a task's start, decided against a revocation, at once;
its later updates batched by one thread per process for the tasks that keep no result in Redis, at
once for the others; progress and hand-backs."""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from celery import Task
from sqlalchemy import Connection, Table, Update, bindparam, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite

from ragcore.db import KeptConnection, session_scope, utcnow
from ragcore.db.models import TaskRecord
from ragcore.db.outage import DATABASE_ERRORS, Outage
from ragcore.tasks import contracts
from ragcore.tasks.backlog import Backlog
from ragcore.tasks.states import TaskState

log = logging.getLogger(__name__)

#: How often a ledger writer tries a database that is down again.
RETRY_SECONDS = 2.0

#: How a writer writes a batch of (task id, values): raises what the database raises.
Batch = Callable[[list[tuple[str, dict[str, Any]]]], None]


class Writer:
    """A worker process's ledger updates of the tasks that keep no result in Redis, written by one
    thread in batches.

    Such a task (a delivery, sent per query) is short and frequent: its bookkeeping must not cost it
    database round trips. The signal receivers queue the update and return; the thread writes what
    queued within `linger` seconds of the first update, merged per task (a start the database could
    not take and the task's end become one row update), in one transaction. One queue and one
    thread keep each task's updates in order. A process flushes before it exits; a SIGKILL loses at
    most the last `linger` seconds of updates (the worker's next life still re-queues what it was
    running: see ragcore.worker.recovery).

    While the database is down the updates wait in a bounded backlog (ragcore.tasks.backlog), tried
    again every `RETRY_SECONDS`, and the outage is logged once as it begins and once as it ends.
    Every update of the process goes through the backlog while it is not empty, so none overtakes
    an older one.
    """

    def __init__(self, linger: float = 0.2, write_batch: Batch | None = None) -> None:
        """`write_batch`: how a batch is written (by default as updates of rows: `write`)."""
        self._linger = linger
        self._write_batch = write_batch
        self._hurry = threading.Event()  # set by flush(): write without lingering
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | threading.Event] = (
            queue.SimpleQueue()
        )
        self._backlog = Backlog()
        self._outage = Outage("task ledger writer")
        _writers.add(self)

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
            (self._write_batch or write)(self._backlog.items())
        except DATABASE_ERRORS as exc:
            self._outage.failed(exc)
            return
        except Exception:  # the ledger must never fail a task (nor stop the writer thread)
            ids = [task_id for task_id, _ in self._backlog.items()[:20]]
            log.exception("task ledger update failed", extra={"ledger_task_ids": ids})
        written, dropped = self._backlog.clear()
        self._outage.over(ledger_rows_written=written, updates_dropped=dropped)


#: Every writer of this process, flushed before it exits.
_writers: weakref.WeakSet[Writer] = weakref.WeakSet()

_IDENTITY = frozenset(("name", "queue"))


@lru_cache(maxsize=64)
def _statement(columns: tuple[str, ...]) -> Update:
    """The UPDATE of one set of columns, built once per process: building and hashing a new
    statement per update cost more CPU than running it."""
    table = cast(Table, TaskRecord.__table__)  # declared on the model, so a Table
    # Name and queue only fill what is unknown (an id revoked before any worker received it).
    values = {
        c: func.coalesce(table.c[c], bindparam(c)) if c in _IDENTITY else bindparam(c)
        for c in columns
    }
    statement = update(table).where(table.c.task_id == bindparam("_task_id")).values(values)
    if "state" in columns:  # a task revoked while it waited stays REVOKED
        statement = statement.where(
            or_(
                table.c.state != TaskState.REVOKED.value,
                bindparam("state") == TaskState.REVOKED.value,
            )
        )
    return statement


def _by_shape(updates: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, ...], list[Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for task_id, values in updates:
        merged.setdefault(task_id, {}).update(values)
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for task_id, values in merged.items():
        shapes.setdefault(tuple(sorted(values)), []).append({"_task_id": task_id, **values})
    return shapes


def write(updates: list[tuple[str, dict[str, Any]]]) -> None:
    """Write `updates` (merged per task) in one transaction; raises what the database raises."""
    with session_scope() as session:
        for columns, rows in _by_shape(updates).items():  # one executemany per set of columns
            session.execute(_statement(columns), rows)


_writer = Writer()
_connection = KeptConnection()
#: The starts' connection: committed at once, durable without waiting for the disk (see
#: `claim_start`).
_claims = KeptConnection(asynchronous_commit=True)


def write_now(task_id: str, values: dict[str, Any]) -> None:
    """Written at once; while the database is down (or older updates still wait) kept by the writer
    in order instead."""
    if not _writer.backlogged:
        try:
            ((columns, rows),) = _by_shape([(task_id, values)]).items()
            statement = _statement(columns)
            _connection.run(lambda conn: conn.execute(statement, rows))
            return
        except DATABASE_ERRORS:
            pass  # the writer keeps it, and says once that the database is down
        except Exception:  # the ledger must never fail a task
            log.exception("task ledger update failed", extra={"ledger_task_ids": [task_id]})
            return
    _writer.put(task_id, values)


@lru_cache(maxsize=2)
def _claim(dialect: str) -> Any:
    """A worker's start: the row made STARTED unless it is REVOKED, inserted if nobody recorded it
    (another client's task), in one statement whose returned row is the verdict."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(TaskRecord)
    return statement.on_conflict_do_update(
        index_elements=["task_id"],
        set_={c: statement.excluded[c] for c in ("state", "started_at", "worker")},
        where=TaskRecord.state != TaskState.REVOKED.value,
    ).returning(TaskRecord.task_id)


def claim_start(
    task_id: str, worker: str | None, name: str, queue: str, kwargs: dict[str, Any]
) -> bool:
    """A worker's start, decided against `ledger.revoke` by one conditional statement and written
    at once (one round trip on the kept connection): False when the task was revoked while it
    waited (it must not run), True otherwise. A task nobody recorded yet (another client's, whose
    receive-time row may still be on its way) is recorded here with its name, queue and `kwargs`.

    While the database is down (or older updates still wait) the start is kept by the writer and
    the task runs: Celery's own revoked ids still apply.

    The start commits asynchronously (`KeptConnection(asynchronous_commit=True)`): committed, so
    visible at once to a revocation and to the recovery of a killed worker, but not waiting for
    its WAL to reach the disk, which was half of a trivial task's time in the ledger (~0.5 ms of
    fdatasync here). It becomes durable before anything depends on its durability: the revocation
    decided against it commits synchronously, and so does the task's end, before the message is
    acknowledged, each flushing the WAL that precedes it; otherwise within PostgreSQL's WAL
    writer's delay (SQLite: at its next checkpoint). Only a crash of the database's machine (of
    PostgreSQL itself) in that window, with the task's end not written after it, loses a start: the
    row reads as it did before (waiting), and the broker still holds the unacknowledged message."""
    started = {"state": TaskState.STARTED, "started_at": utcnow(), "worker": worker}
    if not _writer.backlogged:
        row = {"task_id": task_id, "name": name, "queue": queue, "kwargs": kwargs, **started}

        def claim(conn: Connection) -> bool:
            return conn.execute(_claim(conn.dialect.name), row).first() is not None

        try:
            return _claims.run(claim)
        except DATABASE_ERRORS as exc:
            log.warning("task ledger unreachable at the start of %s: %s", task_id, exc)
        except Exception:  # the ledger must never fail a task
            log.exception("task ledger start failed", extra={"ledger_task_ids": [task_id]})
            return True
    _writer.put(task_id, started)
    return True


def update_task(task: Any, task_id: str | None, **values: Any) -> None:
    """Batched for tasks that keep no result in Redis; written at once for the others, so that what
    the result backend shows (STARTED, SUCCESS...) the ledger shows too (status reads both)."""
    contract = contracts.BY_NAME.get(getattr(task, "name", None) or "")
    if contract is not None and not contract.store_result:
        _writer.put(task_id, values)
    elif task_id:
        write_now(task_id, values)


def flush() -> None:
    """Write this process's queued ledger updates now (before it exits)."""
    for writer in list(_writers):
        writer.flush()


def set_progress(task_id: str, progress: dict[str, Any]) -> None:
    # The state stays STARTED: recovery of lost workers looks for STARTED tasks; status shows
    # PROGRESS.
    write_now(task_id, {"progress": progress})


def handed_back(task_id: str, progress: dict[str, Any]) -> None:
    """A running task gave its message back to the queue (its worker stops): it waits again."""
    write_now(task_id, {"state": TaskState.PENDING, "progress": progress})


def report_progress(task: Task, done: int, total: int, **extra: Any) -> None:
    """Progress where status reads it: the result backend (live) and the ledger (durable)."""
    meta = {"done": done, "total": total, **extra}
    task.update_state(state=TaskState.PROGRESS, meta=meta)
    set_progress(task.request.id, meta)
