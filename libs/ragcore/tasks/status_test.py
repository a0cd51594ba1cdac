"""The status merge: the live result where Redis still has it, the ledger where it does not."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ragcore.db.models import TaskRecord
from ragcore.tasks import status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Live:
    """What Celery's AsyncResult shows; `state=None` raises as an unreachable backend does."""

    def __init__(self, state: str | None, result: Any = None, **extra: Any) -> None:
        self._state, self.result, self.info = state, result, result
        self.traceback: str | None = extra.pop("traceback", None)
        for name, value in extra.items():
            setattr(self, name, value)

    @property
    def state(self) -> str:
        if self._state is None:
            raise ConnectionError("Redis is down")
        return self._state


def _record(state: str, **values: Any) -> TaskRecord:
    return TaskRecord(
        task_id="t1", name="sync_embeddings", queue="sync", state=state, kwargs={},
        sent_at=T0, retries=0, revoked=False, **values,
    )  # fmt: skip


def _merge(live: Live, record: TaskRecord | None, **kw: Any) -> status.TaskStatus | None:
    return status.merge("t1", status.live_state(live), live, record, **kw)


def test_an_id_never_sent_has_no_status_whether_or_not_redis_answers() -> None:
    assert _merge(Live("PENDING"), None) is None
    assert _merge(Live(None), None) is None


def test_an_expired_result_is_answered_from_the_ledger_with_its_plain_value() -> None:
    record = _record("SUCCESS", result={"value": 3}, finished_at=T0)
    view = _merge(Live("PENDING"), record)
    assert view is not None
    assert (view.status, view.result, view.name, view.finished_at) == (
        "SUCCESS", 3, "sync_embeddings", T0,
    )  # fmt: skip


def test_a_dict_result_in_the_ledger_is_answered_as_is() -> None:
    view = _merge(Live("PENDING"), _record("SUCCESS", result={"copied": 2}))
    assert view is not None and view.result == {"copied": 2}


def test_a_started_task_with_progress_in_the_ledger_is_progress() -> None:
    progress = {"done": 1, "total": 4}
    view = _merge(Live("PENDING"), _record("STARTED", progress=progress))
    assert view is not None and (view.status, view.progress) == ("PROGRESS", progress)
    assert status.ledger_state(_record("STARTED")) == "STARTED"


def test_live_progress_is_newer_than_the_ledger_s() -> None:
    view = _merge(Live("PROGRESS", {"done": 3}), _record("STARTED", progress={"done": 1}))
    assert view is not None and (view.status, view.progress) == ("PROGRESS", {"done": 3})


def test_a_live_failure_names_its_exception_and_keeps_the_traceback() -> None:
    live = Live("FAILURE", ValueError("boom"), traceback="Traceback ...")
    view = _merge(live, _record("STARTED"))
    assert view is not None
    assert (view.status, view.error, view.traceback) == (
        "FAILURE", "ValueError: boom", "Traceback ...",
    )  # fmt: skip


def test_a_live_success_gives_its_result_before_the_ledger_catches_up() -> None:
    view = _merge(Live("SUCCESS", {"copied": 5}), _record("PENDING"))
    assert view is not None and (view.status, view.result) == ("SUCCESS", {"copied": 5})


def test_with_the_backend_down_the_ledger_answers_alone() -> None:
    record = _record("FAILURE", error="RuntimeError: x", traceback="tb")
    view = _merge(Live(None, name="other"), record)
    assert view is not None
    assert (view.status, view.error, view.traceback, view.name) == (
        "FAILURE", "RuntimeError: x", "tb", "sync_embeddings",
    )  # fmt: skip


def test_a_task_only_redis_knows_takes_its_name_and_queue_from_the_result() -> None:
    view = _merge(Live("SUCCESS", 1, name="cleanup_old_cache", queue="cleanup"), None)
    assert view is not None
    assert (view.status, view.result, view.name, view.queue) == (
        "SUCCESS", 1, "cleanup_old_cache", "cleanup",
    )  # fmt: skip


def test_a_lost_worker_marks_the_task_as_lost_since_its_last_beat() -> None:
    view = _merge(Live("STARTED"), _record("STARTED", worker="sync@a"), lost_since=T0)
    assert view is not None and (view.worker_lost, view.worker_lost_since) == (True, T0)
    beating = _merge(Live("STARTED"), _record("STARTED", worker="sync@a"))
    assert beating is not None and not beating.worker_lost


def test_a_live_end_gives_its_time_before_the_ledger_catches_up() -> None:
    # The worker stores its result in Redis first, then writes the ledger: between the two, status
    # tells the end's time as the backend stamped it, never "SUCCESS" without `finished_at`.
    ended = datetime(2026, 1, 1, 0, 0, 3)
    view = _merge(Live("SUCCESS", 1, date_done=ended.isoformat()), _record("STARTED"))
    assert view is not None and view.finished_at == ended.replace(tzinfo=UTC)
    written = _record("SUCCESS", finished_at=T0)
    view = _merge(Live("SUCCESS", 1, date_done=ended), written)
    assert view is not None and view.finished_at == T0  # the ledger's, once written
