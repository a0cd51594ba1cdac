"""Asking the workers: one bounded wait, cut short once every live worker answered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from ragcore.broker import heartbeats, workers
from ragcore.db.models import TaskRecord
from ragcore.settings import RedisSettings, Settings, WorkerSettings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Inspect:
    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies

    def __getattr__(self, method: str) -> Any:
        return lambda: self.replies[method]


class Control:
    def __init__(self, inspect: Inspect) -> None:
        self.inspect_ = inspect
        self.options: dict[str, Any] = {}

    def inspect(self, **options: Any) -> Inspect:
        self.options = options
        return self.inspect_


class Celery:
    def __init__(self, replies: dict[str, Any]) -> None:
        self.control = Control(Inspect(replies))


def _settings() -> Settings:
    return Settings(
        redis=RedisSettings(url="redis://127.0.0.1:1/0"),
        workers=WorkerSettings(inspect_timeout_seconds=0.5),
    )


def test_each_method_answers_in_order_and_a_silent_one_is_empty(monkeypatch: Any) -> None:
    monkeypatch.setattr(heartbeats, "live_workers", lambda client, ttl: {"a@h", "b@h"})
    celery = Celery({"active": {"a@h": [{"id": "t1"}]}, "stats": None})
    active, stats = workers.ask(celery, _settings(), "active", "stats")
    assert (active, stats) == ({"a@h": [{"id": "t1"}]}, {})
    # Stop as soon as both live workers answered; the timeout bounds the wait otherwise.
    assert celery.control.options == {"timeout": 0.5, "limit": 2}


def test_with_no_heartbeats_readable_the_timeout_alone_bounds_the_wait(monkeypatch: Any) -> None:
    def down(client: Any, ttl: float) -> set[str]:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(heartbeats, "live_workers", down)
    celery = Celery({"registered": {}})
    assert workers.ask(celery, _settings(), "registered") == [{}]
    assert celery.control.options == {"timeout": 0.5, "limit": None}


def _started(**values: Any) -> TaskRecord:
    return TaskRecord(
        task_id="t1", name="n", queue="sync", state="STARTED", kwargs={}, started_at=T0,
        worker="sync@a", **values,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("record", "last", "expected"),
    [
        (_started(), 1767225600.0, datetime.fromtimestamp(1767225600.0, UTC)),
        (_started(), None, T0),  # no heartbeat left: handed back, lost since it started
    ],
)
def test_a_task_whose_worker_stopped_beating_is_lost_since_its_last_beat(
    monkeypatch: Any, record: TaskRecord, last: float | None, expected: datetime
) -> None:
    monkeypatch.setattr(heartbeats, "worker_record", lambda client, host: None)
    monkeypatch.setattr(heartbeats, "last_heartbeat", lambda client, queue, host: last)
    assert workers.lost_since(redis.Redis(), record) == expected


def test_a_beating_worker_a_finished_task_or_a_down_broker_lose_nothing(monkeypatch: Any) -> None:
    monkeypatch.setattr(heartbeats, "worker_record", lambda client, host: {"pool": "prefork"})
    assert workers.lost_since(redis.Redis(), _started()) is None
    finished = _started()
    finished.state = "SUCCESS"
    assert workers.lost_since(redis.Redis(), finished) is None
    down = redis.Redis(port=1, socket_connect_timeout=0.2)
    monkeypatch.undo()
    assert workers.lost_since(down, _started()) is None
