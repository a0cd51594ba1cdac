"""Engines and sessions: one engine per URL per process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy
from sqlalchemy import Connection, CursorResult, Engine, Executable, event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ragcore.settings import get_settings

_engines: dict[str, Engine] = {}
#: How long SQLite waits for the write lock (ms); how long per try while `begin_immediate` polls.
_BUSY_TIMEOUT_MS = 30000
_POLL_MS = 1
_T = TypeVar("_T")
#: Every KeptConnection, closed with the engines.
_kept: weakref.WeakSet[KeptConnection] = weakref.WeakSet()

#: What opens a session: `session_scope` in deployables, one on a test database in unit tests.
Sessions = Callable[[], AbstractContextManager[Session]]


def get_engine(url: str | None = None) -> Engine:
    """This process's engine for `url` (default: the configured database)."""
    url = url or get_settings().database_url
    engine = _engines.get(url)
    if engine is None:
        engine = _engines.setdefault(url, _create_engine(url))
    return engine


def engines() -> list[Engine]:
    """The engines this process has made so far (tracing instruments them)."""
    return list(_engines.values())


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sqlalchemy.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    # Looked up on the module each time: tracing (ragcore.tracing) wraps it once it is on.
    engine = sqlalchemy.create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={"connect_timeout": 5}
    )
    _never_across_processes(engine)
    return engine


def _never_across_processes(engine: Engine) -> None:
    """A pooled connection inherited through fork (Celery's prefork pool) is never used by the
    child.

    Two processes on one socket corrupt each other's protocol state ("server closed the connection
    unexpectedly"); SQLAlchemy's recipe: remember the pid per connection, refuse it elsewhere.
    """

    @event.listens_for(engine, "connect")
    def _remember_pid(dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _refuse_foreign(dbapi_connection, record, proxy) -> None:  # type: ignore[no-untyped-def]
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise exc.DisconnectionError(
                f"connection made in process {record.info.get('pid')}, not {os.getpid()}"
            )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while a worker writes; several local processes share one file.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # Under WAL, NORMAL syncs the log to disk at checkpoints, not at every commit. A commit is in
    # the WAL file (the operating system's cache) before COMMIT returns, so a process that crashes
    # or is killed -- a worker mid-task, the API -- loses nothing it committed: the ledger's
    # guarantees (a killed worker's tasks are found and re-queued) are about process crashes and
    # hold. Only a power loss or an OS crash can undo the last commits (the file stays
    # consistent). FULL's fsync per commit (~2 ms here) was held under the one write lock every
    # process shares, which made writers queue behind it (issue 20: seconds of p99).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cursor.close()


def begin_immediate(session: Session, timeout: float = 30.0) -> None:
    """Start the session's transaction as a writer now (SQLite's `BEGIN IMMEDIATE`), trying every
    millisecond while another process writes; nothing on PostgreSQL.

    SQLite's own wait (its busy handler) backs off to 100 ms between tries, so a writer that has
    waited loses the lock to newcomers and the waits of a few reach seconds (issue 20: the API's
    threads spent 72 % of their time at the answer's first write; p99 0.9-1.2 s at a p50 of
    22-24 ms). Polled here every millisecond -- Rails 8's SQLite adapter does the same with
    sqlite3-ruby's `busy_handler_timeout` ("a fair retry interval", rails/rails#51958) -- the waiter
    takes the lock about when it frees, and the statements after it never wait. A transaction this
    session already began (a write ran) is left as it is. Past `timeout` it raises SQLAlchemy's
    OperationalError, as SQLite's own busy timeout would.
    """
    if session.get_bind().dialect.name != "sqlite":
        return
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None
    if dbapi.in_transaction:
        return
    deadline = time.monotonic() + timeout
    dbapi.execute(f"PRAGMA busy_timeout={_POLL_MS}")
    try:
        while True:
            try:
                dbapi.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    # as SQLAlchemy raises it (the API answers 503)
                    raise exc.OperationalError("BEGIN IMMEDIATE", None, error) from error
    finally:
        dbapi.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")


def _factory(url: str | None) -> sessionmaker[Session]:
    return _sessionmaker(url or get_settings().database_url)


@lru_cache
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def reset_engines() -> None:
    """Dispose of every engine (a test switching databases or settings)."""
    for kept in list(_kept):
        kept.close()
    for engine in list(_engines.values()):
        engine.dispose()
    _engines.clear()
    _sessionmaker.cache_clear()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


#: Per connection: its commits stop waiting for the disk (see `KeptConnection`).
_ASYNCHRONOUS_COMMIT = {
    "postgresql": "SET synchronous_commit = off",
    "sqlite": "PRAGMA synchronous = NORMAL",
}


class KeptConnection:
    """One connection of this process's engine kept open in autocommit, for single statements on a
    task's path (the ledger's synchronous updates).

    A statement through `session_scope` costs five round trips to PostgreSQL (the pool's ping,
    BEGIN, the statement, COMMIT, the pool's reset ROLLBACK) and the session's bookkeeping; here it
    is one round trip, its own transaction. Only for one statement that must be atomic alone. A
    connection the database dropped is replaced and the statement tried once more, as the pool's
    ping would; a database that is down raises what it raises. A forked child opens its own.

    `asynchronous_commit`: the connection's commits return before their WAL reaches the disk,
    committed and visible to every other transaction at once. On PostgreSQL
    (`synchronous_commit = off`) the WAL writer makes them durable within `wal_writer_delay` (200 ms
    by default), or the next synchronous commit of any connection does, whichever comes first; a
    PostgreSQL crash (not a restart) in between loses them. On SQLite every pooled connection is so
    already (`synchronous = NORMAL` under WAL, `_sqlite_pragmas`): a process crash loses nothing;
    a checkpoint makes the commits durable against a power loss; a kept connection without
    `asynchronous_commit` is FULL there, its commits synced as they return. Such a connection is
    never handed back to the pool (the setting would follow it into other sessions): closed, it is
    discarded.
    """

    def __init__(self, url: str | None = None, *, asynchronous_commit: bool = False) -> None:
        self._url = url
        self._asynchronous_commit = asynchronous_commit
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._pid: int | None = None
        _kept.add(self)

    def run(self, work: Callable[[Connection], _T]) -> _T:
        with self._lock:
            for attempt in (1, 2):
                connection = self._open()
                try:
                    return work(connection)
                except exc.DBAPIError as error:
                    if not error.connection_invalidated or attempt == 2:
                        self._close()
                        raise
                    self._close()
        raise AssertionError("unreachable")  # the loop returns or raises

    def _open(self) -> Connection:
        if self._connection is None or self._pid != os.getpid():
            # an inherited connection is never used (see _never_across_processes): a new one
            connection = (
                get_engine(self._url).connect().execution_options(isolation_level="AUTOCOMMIT")
            )
            if self._asynchronous_commit:
                connection.exec_driver_sql(_ASYNCHRONOUS_COMMIT[connection.dialect.name])
            elif connection.dialect.name == "sqlite":
                # The one synchronous writer on SQLite (every other connection is NORMAL): the
                # ledger's updates before a message's ack reach the disk before the ack.
                connection.exec_driver_sql("PRAGMA synchronous = FULL")
            self._connection = connection
            self._pid = os.getpid()
        return self._connection

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(exc.DBAPIError):  # already broken: the pool discards it
                if self._asynchronous_commit or connection.dialect.name == "sqlite":
                    connection.invalidate()  # its setting stays out of the pool
                connection.close()


def rows_affected(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed (SQLAlchemy types `execute` as returning a
    plain `Result`, which has no rowcount)."""
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount


def insert_for(session: Session) -> Any:
    """The INSERT of the session's dialect: PostgreSQL's and SQLite's both have ON CONFLICT."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
