"""The ledger's queries: history pages, revocations, and the aggregates behind /metrics (SQLite
here; PostgreSQL in the integration tests)."""

import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.worker import state as worker_state
from sqlalchemy import Connection, create_engine
from sqlalchemy.orm import Session

from ragcore.db import create_schema, get_engine, reset_engines, session_scope
from ragcore.db.models import Base, TaskRecord
from ragcore.settings import get_settings
from ragcore.tasks import ledger
from ragcore.tasks.ledger import receivers, writer
from ragcore.tasks.states import TaskState
from ragcore_dev.servers import postgres_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture()
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


@pytest.fixture()
def ledger_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's own sessions (`session_scope`) on a fresh SQLite ledger."""
    monkeypatch.setenv("RAGCORE_DATABASE_URL", f"sqlite:///{tmp_path}/ledger.db")
    get_settings.cache_clear()
    try:
        create_schema()
        yield
    finally:
        get_settings.cache_clear()
        reset_engines()


def _task(
    session: Session,
    n: int,
    name: str = "cleanup_old_cache",
    state: str = "SUCCESS",
    run: float | None = None,
    **values: object,
) -> TaskRecord:
    sent = T0 + timedelta(minutes=n)
    record = TaskRecord(
        task_id=f"t{n:03d}",
        name=name,
        queue="cleanup",
        state=state,
        kwargs={},
        sent_at=sent,
        **values,
    )
    if run is not None:
        record.started_at, record.finished_at = sent, sent + timedelta(seconds=run)
        record.run_seconds = run
    session.add(record)
    return record


def test_history_pages_newest_first_without_gaps_or_repeats(session: Session) -> None:
    for n in range(7):
        _task(session, n)
    session.flush()
    seen, cursor = [], None
    while True:
        rows, cursor = ledger.history(session, limit=3, cursor=cursor)
        seen += [r.task_id for r in rows]
        if cursor is None:
            break
    assert seen == [f"t{n:03d}" for n in reversed(range(7))]


def test_history_filters_by_name_state_and_time(session: Session) -> None:
    _task(session, 1, state="FAILURE")
    _task(session, 2, name="reset_all_daily_limits", state="FAILURE")
    _task(session, 3, state="FAILURE")
    _task(session, 4)
    _task(session, 5, state="STARTED", progress={"done": 1, "total": 2})
    _task(session, 6, state="STARTED")
    session.flush()
    rows, cursor = ledger.history(
        session, name="cleanup_old_cache", state=TaskState.FAILURE, since=T0 + timedelta(minutes=2)
    )
    assert [r.task_id for r in rows] == ["t003"] and cursor is None
    assert [r.task_id for r in ledger.history(session, state=TaskState.PROGRESS)[0]] == ["t005"]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "",
        "12345",
        "12345.",
        "-1.t1",
        "12345678901234567.t1",
        "1.t\x00",
        "1.t1\n",
        "1." + "t" * 65,
        "MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHx0MQ==",
    ],
)
def test_a_forged_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        ledger.decode_cursor(cursor)


def test_a_cursor_has_the_shape_the_api_publishes_and_names_its_row() -> None:
    record = TaskRecord(
        task_id="t.1:a@b-c",
        name="x",
        queue="sync",
        state="PENDING",
        sent_at=T0 + timedelta(microseconds=7),
    )
    cursor = ledger.encode_cursor(record)
    assert re.fullmatch(ledger.CURSOR_PATTERN, cursor)
    assert ledger.decode_cursor(cursor) == (record.sent_at, record.task_id)


def test_revoking_a_waiting_task_ends_it_but_a_running_one_keeps_running(session: Session) -> None:
    waiting, running = _task(session, 1, state="PENDING"), _task(session, 2, state="STARTED")
    finished = _task(session, 3, state="SUCCESS", revoked=True)
    session.flush()
    # the state the one conditional UPDATE leaves is the answer
    assert ledger.revoke(session, "t001") == TaskState.REVOKED
    assert ledger.revoke(session, "t002") == TaskState.STARTED
    assert ledger.revoke(session, "t003") is None  # ran to its end: nothing to revoke
    for record in (waiting, running, finished):
        session.refresh(record)
    assert (waiting.state, waiting.revoked, waiting.finished_at is not None) == (
        "REVOKED",
        True,
        True,
    )
    assert (running.state, running.revoked) == ("STARTED", True)
    assert ledger.revoked_ids(session) == ["t002", "t001"]  # finished ones can never run again
    assert finished.task_id not in ledger.revoked_ids(session)


@pytest.fixture()
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The configured database (what workers' session_scope() opens) on a fresh SQLite file."""
    monkeypatch.setenv("RAGCORE_DATABASE_URL", f"sqlite:///{tmp_path}/ledger.db")
    get_settings.cache_clear()
    create_schema()
    yield
    reset_engines()
    get_settings.cache_clear()


def test_revoke_and_a_workers_start_are_decided_one_against_the_other(configured: None) -> None:
    with session_scope() as s:
        s.add_all(
            TaskRecord(task_id=t, name="n", queue="user", state="PENDING", kwargs={})
            for t in ("revoked-first", "started-first")
        )

    def claim(task_id: str) -> bool:
        return ledger.claim_start(task_id, "w@h", "n", "user", {"echo": task_id})

    # revoked while it waited: the worker that takes it next must not run it ...
    with session_scope() as s:
        assert ledger.revoke(s, "revoked-first") == TaskState.REVOKED
    assert claim("revoked-first") is False
    # ... and a start the writer kept (the database was down) does not undo the revocation
    ledger.write([("revoked-first", {"state": "STARTED", "started_at": T0, "worker": "w@h"})])
    # started first: the revocation sees it running, so terminate applies and the answer says so
    assert claim("started-first") is True
    with session_scope() as s:
        assert ledger.revoke(s, "started-first") == TaskState.STARTED
        rows = {r.task_id: (r.state, r.revoked, r.kwargs) for r in s.query(TaskRecord)}
    assert rows == {
        "revoked-first": ("REVOKED", True, {}),
        "started-first": ("STARTED", True, {}),  # the row's arguments are kept
    }
    # another client's, not recorded yet: it runs, and its start records it
    assert claim("never-recorded") is True
    with session_scope() as s:
        record = s.get(TaskRecord, "never-recorded")
        assert record is not None
        assert (record.state, record.name, record.queue, record.worker, record.kwargs) == (
            "STARTED",
            "n",
            "user",
            "w@h",
            {"echo": "never-recorded"},
        )
        assert record.started_at is not None and record.sent_at is not None
    # ... and its receive-time row, landing after, keeps what it finds
    request = SimpleNamespace(
        id="never-recorded",
        name="n",
        kwargs={"echo": "never-recorded"},
        request_dict={},
        delivery_info={"routing_key": "user"},
    )
    ledger.record_received(request)
    ledger.flush()
    with session_scope() as s:
        record = s.get(TaskRecord, "never-recorded")
        assert record is not None and (record.state, record.worker) == ("STARTED", "w@h")


def test_counts_and_durations_cover_the_window(session: Session) -> None:
    _task(session, 0, run=100.0)  # sent before the window
    _task(session, 10, run=0.3)
    _task(session, 11, run=4.0)
    _task(session, 12, state="FAILURE", run=20.0)
    _task(session, 13, state="STARTED")
    session.flush()
    since = T0 + timedelta(minutes=5)
    window = ledger.window(session, since, (1.0, 5.0, 60.0))
    assert sorted(window.counts) == [
        ("cleanup_old_cache", "FAILURE", 1),
        ("cleanup_old_cache", "STARTED", 1),
        ("cleanup_old_cache", "SUCCESS", 2),
    ]
    [d] = window.durations
    assert (d.name, d.count, d.buckets) == ("cleanup_old_cache", 3, [(1.0, 1), (5.0, 2), (60.0, 3)])
    assert d.total_seconds == pytest.approx(24.3, abs=0.01)


def test_worker_updates_are_written_in_order_merged_per_task_once_flushed(ledger_db: None) -> None:
    with session_scope() as s:
        s.add_all(
            TaskRecord(task_id=f"t{i}", name="n", queue="user", state="PENDING", kwargs={})
            for i in range(3)
        )
    writer = ledger.Writer()
    writer.put("t0", {"state": "STARTED", "started_at": T0, "worker": "w@h"})
    writer.put("t1", {"state": "STARTED", "started_at": T0, "worker": "w@h"})
    writer.put("t0", {"progress": {"done": 1, "total": 2}})
    writer.put(
        "t0",
        {
            "state": "SUCCESS",
            "finished_at": T0 + timedelta(seconds=2),
            "result": {"ok": True},
            "error": None,
        },
    )
    writer.put("t1", {"state": "RETRY", "retries": 1, "error": "boom"})
    writer.flush()
    with session_scope() as s:
        rows = {r.task_id: r for r in s.query(TaskRecord)}
    assert (rows["t0"].state, rows["t0"].worker, rows["t0"].result, rows["t0"].progress) == (
        "SUCCESS",
        "w@h",
        {"ok": True},
        {"done": 1, "total": 2},
    )
    started, finished = rows["t0"].started_at, rows["t0"].finished_at
    assert (
        started is not None and finished is not None and finished - started == timedelta(seconds=2)
    )
    assert (rows["t1"].state, rows["t1"].retries, rows["t1"].error) == ("RETRY", 1, "boom")
    assert rows["t2"].state == "PENDING"


def test_an_id_revoked_unseen_is_one_row_kept_for_workers_and_left_out_of_metrics(
    session: Session,
) -> None:
    _task(session, 1, state="PENDING")
    session.flush()
    for _ in range(2):
        ledger.record_revoked_unseen(session, "later")
    record = session.get(TaskRecord, "later")
    assert record is not None and (record.name, record.queue, record.state, record.revoked) == (
        None,
        None,
        "REVOKED",
        True,
    )
    assert "later" in ledger.revoked_ids(session)
    counts = ledger.window(session, T0, ()).counts
    assert [(n, s) for n, s, _ in counts] == [("cleanup_old_cache", "PENDING")]


def test_a_worker_fills_in_the_name_and_queue_of_an_unseen_id_and_keeps_known_ones(
    ledger_db: None,
) -> None:
    with session_scope() as s:
        ledger.record_revoked_unseen(s, "unseen")
        s.add(TaskRecord(task_id="known", name="n", queue="user", state="PENDING", kwargs={}))
    identity = {"name": "other", "queue": "sync"}
    ledger.write(
        [
            ("unseen", {"state": "REVOKED", **identity}),
            ("known", {"state": "REVOKED", **identity}),
        ]
    )
    with session_scope() as s:
        rows = {r.task_id: (r.name, r.queue, r.state) for r in s.query(TaskRecord)}
    assert rows == {"unseen": ("other", "sync", "REVOKED"), "known": ("n", "user", "REVOKED")}


def test_a_task_celery_cancelled_on_a_lost_connection_waits_again_but_a_revoked_one_ends(
    ledger_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Celery announces a request its pool accepted but had not started as revoked (terminated)
    # when the broker connection drops; only an id somebody revoked may end REVOKED.
    with session_scope() as s:
        for task_id in ("cancelled", "revoked"):
            s.add(
                TaskRecord(
                    task_id=task_id,
                    name="cleanup_old_cache",
                    queue="cleanup",
                    state="PENDING",
                    kwargs={},
                )
            )
    sender = SimpleNamespace(name="cleanup_old_cache")
    monkeypatch.setattr(worker_state, "revoked", {"revoked"})
    for task_id in ("cancelled", "revoked"):
        request = SimpleNamespace(id=task_id, delivery_info={"routing_key": "cleanup"})
        receivers._revoked(sender, request, terminated=True, signum=15, expired=False)
    with session_scope() as s:
        rows = {r.task_id: (r.state, r.revoked) for r in s.query(TaskRecord)}
    assert rows == {"cancelled": ("RETRY", False), "revoked": ("REVOKED", True)}


def test_on_postgresql_a_start_commits_without_waiting_for_the_disk_and_nothing_else_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The start's commit skips the WAL flush (half of a trivial task's ledger time); the task's end
    # and every session keep synchronous commits, which also make the start durable.
    with postgres_database() as url:
        monkeypatch.setenv("RAGCORE_DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            create_schema()
            with session_scope() as s:
                s.add(TaskRecord(task_id="t", name="n", queue="user", state="PENDING", kwargs={}))
            assert ledger.claim_start("t", "w@h", "n", "user", {}) is True
            with session_scope() as s:  # committed: visible to another connection at once
                record = s.get(TaskRecord, "t")
                assert record is not None and record.state == "STARTED"

            def commit_mode(conn: Connection) -> object:
                return conn.exec_driver_sql("SHOW synchronous_commit").scalar()

            assert writer._claims.run(commit_mode) == "off"
            assert writer._connection.run(commit_mode) == "on"  # the end's, before the ack
            # closed, the start's connection is discarded: none the pool hands out is asynchronous
            writer._claims.close()
            with ExitStack() as held:
                pooled = [held.enter_context(get_engine().connect()) for _ in range(6)]
                assert {commit_mode(conn) for conn in pooled} == {"on"}
        finally:
            reset_engines()
            get_settings.cache_clear()


def test_on_sqlite_a_start_commits_without_syncing_the_wal_and_the_end_before_the_ack_syncs(
    configured: None,
) -> None:
    with session_scope() as s:
        s.add(TaskRecord(task_id="t", name="n", queue="user", state="PENDING", kwargs={}))
    assert ledger.claim_start("t", "w@h", "n", "user", {}) is True

    def sync_mode(conn: Connection) -> object:
        return conn.exec_driver_sql("PRAGMA synchronous").scalar()

    assert writer._claims.run(sync_mode) == 1  # NORMAL: no fsync at its commits
    assert writer._connection.run(sync_mode) == 2  # FULL: the end's, before the ack
    writer._claims.close()
    writer._connection.close()
    with ExitStack() as held:
        pooled = [held.enter_context(get_engine().connect()) for _ in range(6)]
        # every pooled SQLite connection is NORMAL (ragcore.db.session, issue 20 point 3)
        assert {sync_mode(conn) for conn in pooled} == {1}
