"""The ledger queries the console adds: history by queue, worker, id prefix and time range; runs
again linked to their first run; each queue's last hour (SQLite here; PostgreSQL in the console's
browser test and benchmark)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from ragcore.db.models import Base, TaskRecord
from ragcore.tasks import ledger, rerun
from ragcore.tasks.activity import failed_since, queue_activity

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture()
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _task(session: Session, task_id: str, minute: int, **values: object) -> TaskRecord:
    record = TaskRecord(
        **{
            "task_id": task_id,
            "name": "cleanup_old_cache",
            "queue": "cleanup",
            "state": "SUCCESS",
            "kwargs": {},
            "sent_at": T0 + timedelta(minutes=minute),
            **values,
        }
    )
    session.add(record)
    session.flush()
    return record


def _ids(session: Session, **filters: object) -> list[str]:
    rows, _ = ledger.history(session, **filters)  # type: ignore[arg-type]
    return [r.task_id for r in rows]


def test_history_filters_by_queue_worker_id_prefix_and_time_range(session: Session) -> None:
    _task(session, "abc-1", 1, worker="cleanup@a")
    _task(session, "abd-2", 2, queue="user", name="calculate_user_tier", worker="user@a")
    _task(session, "ab_c-3", 3, worker="cleanup@b")
    _task(session, "abcz-4", 4, worker="cleanup@a")
    assert _ids(session, queue="user") == ["abd-2"]
    assert _ids(session, worker="cleanup@a") == ["abcz-4", "abc-1"]
    assert _ids(session, id_prefix="abc") == ["abcz-4", "abc-1"]
    assert _ids(session, id_prefix="ab_") == ["ab_c-3"]  # `_` is no wildcard
    assert _ids(session, id_prefix="abd-2") == ["abd-2"]
    assert _ids(session, id_prefix="zz") == []
    since, until = T0 + timedelta(minutes=2), T0 + timedelta(minutes=4)
    assert _ids(session, since=since, until=until) == ["ab_c-3", "abd-2"]


def test_runs_again_are_linked_to_their_first_run_both_ways(session: Session) -> None:
    first = _task(session, "f1", 1)
    assert rerun.first_run("f1") is None and rerun.runs_again(session, "f1") == []
    _task(session, "f1.again.1", 2)
    _task(session, "f1.again.2", 3)
    assert rerun.first_run("f1.again.2") == "f1"
    assert rerun.runs_again(session, "f1") == ["f1.again.1", "f1.again.2"]
    assert rerun.runs_again(session, "f1.again.1") == ["f1.again.1", "f1.again.2"]
    first.state = "STARTED"
    with pytest.raises(rerun.CannotRunAgain, match="only a finished task runs again"):
        rerun.run_again(Celery(), session, first)


def test_an_id_with_no_room_for_the_suffix_has_no_linked_runs_again(session: Session) -> None:
    assert rerun.runs_again(session, "x" * 60) == []


def test_each_queues_last_hour_counts_waiting_at_each_step_and_finished_within_it(
    session: Session,
) -> None:
    now = T0 + timedelta(hours=1)
    # sent at minute 2, started at 12, finished at 13; sent at 40, still waiting
    _task(
        session,
        "a",
        2,
        started_at=T0 + timedelta(minutes=12),
        finished_at=T0 + timedelta(minutes=13),
    )
    _task(session, "b", 40, state="PENDING")
    _task(session, "c", 41, state="FAILURE", finished_at=T0 + timedelta(minutes=42))
    _task(session, "old", -5)  # sent before the window: not counted
    _task(session, "elsewhere", 30, queue="user")  # a queue not asked for
    found = queue_activity(session, ["cleanup", "sync"], now, timedelta(hours=1), 12)
    assert set(found) == {"cleanup"}  # a queue with no task in the window has no activity
    activity = found["cleanup"]
    assert activity.ends[0] == T0 + timedelta(minutes=5) and activity.ends[-1] == now
    assert activity.waiting == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert activity.finished == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert failed_since(session, T0) == 1
