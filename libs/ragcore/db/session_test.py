import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import exc, text
from sqlalchemy.orm import sessionmaker

from ragcore.db import begin_immediate, get_engine, reset_engines


@pytest.fixture
def sqlite_url(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield f"sqlite:///{tmp_path / 'ragcore.db'}"
    reset_engines()


def test_sqlite_connections_write_ahead_without_a_sync_per_commit(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as connection:
        journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
        busy = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert (journal, synchronous, busy) == ("wal", 1, 30000)  # 1: NORMAL (FULL is 2)


def _commit_then_die(url: str) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(text("INSERT INTO kept VALUES (1)"))
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: a crash


def test_a_commit_survives_the_writer_process_being_killed(sqlite_url: str) -> None:
    """synchronous=NORMAL syncs at checkpoints only: what a killed process committed is in the WAL
    and read by the next one."""
    with get_engine(sqlite_url).begin() as connection:
        connection.execute(text("CREATE TABLE kept (id INTEGER PRIMARY KEY)"))
    reset_engines()
    child = multiprocessing.get_context("fork").Process(target=_commit_then_die, args=(sqlite_url,))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert Path(sqlite_url.removeprefix("sqlite:///") + "-wal").stat().st_size > 0
    with get_engine(sqlite_url).connect() as connection:
        assert connection.execute(text("SELECT id FROM kept")).scalars().all() == [1]


def test_begin_immediate_takes_the_write_lock_as_soon_as_another_process_frees_it(
    sqlite_url: str,
) -> None:
    engine = get_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    other = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    other.execute("PRAGMA busy_timeout=0")
    other.execute("BEGIN IMMEDIATE")  # another process writing
    released = threading.Timer(0.235, lambda: other.execute("COMMIT"))
    sessions = sessionmaker(engine)
    with sessions() as session:
        released.start()
        started = time.monotonic()
        begin_immediate(session)
        waited = time.monotonic() - started
        # The lock is this session's now: another writer cannot start.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        session.execute(text("INSERT INTO t VALUES (1)"))
        session.commit()
    released.join()
    # SQLite's own back-off tries at 228 ms, then sleeps 100 ms: it would have waited 328 ms.
    assert 0.2 < waited < 0.3
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000  # restored
        assert connection.execute(text("SELECT id FROM t")).scalars().all() == [1]
    other.close()


def test_begin_immediate_gives_up_after_its_timeout_as_sqlalchemy_would(sqlite_url: str) -> None:
    engine = get_engine(sqlite_url)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with sessionmaker(engine)() as session, pytest.raises(exc.OperationalError, match="locked"):
            begin_immediate(session, timeout=0.05)
    finally:
        other.execute("ROLLBACK")
        other.close()
