"""A reconcile round: what the broker lost goes out again once, what a live worker holds never."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis
from sqlalchemy.orm import Session

from ragcore.broker import heartbeats
from ragcore.db import utcnow
from ragcore.db.models import TaskRecord
from ragcore.settings import Settings, get_settings
from ragcore.tasks import contracts
from ragcore.tasks.app import create_app
from ragcore.tasks.reconcile import Reason, RoundResult, counts, reconcile_round
from ragcore.worker import recovery
from ragcore_dev.servers import redis_server

Sessions = Callable[[], AbstractContextManager[Session]]
NOTIFICATION = {"notification_type": "t", "title": "t", "message": "m", "user_ids": ["u"]}


@pytest.fixture()
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[redis.Redis, Celery, Settings]]:
    with redis_server() as server:
        monkeypatch.setenv("RAGCORE_REDIS_URL", server.url)
        monkeypatch.setenv("RAGCORE_RECONCILE_GRACE_SECONDS", "60")
        get_settings.cache_clear()
        settings = get_settings()
        app = create_app("reconcile-test", settings)
        client = redis.Redis.from_url(server.url)
        client.set("ragcore:reconcile:since", 0)  # seen long ago: no settling
        yield client, app, settings
        app.close()
    get_settings.cache_clear()


def _sent_an_hour_ago(sessions: Sessions, task_id: str, **fields: Any) -> None:
    row: dict[str, Any] = {
        "name": contracts.SEND_SYSTEM_NOTIFICATION.name,
        "queue": "notifications",
        "state": "PENDING",
        "kwargs": NOTIFICATION,
        **fields,
    }
    with sessions() as session:
        session.add(TaskRecord(task_id=task_id, sent_at=utcnow() - timedelta(hours=1), **row))


def _published(client: redis.Redis) -> list[str]:
    return [orjson.loads(raw)["headers"]["id"] for raw in client.lrange("notifications", 0, -1)]


def _racing_rounds(
    client: redis.Redis, app: Celery, settings: Settings, sessions: Sessions
) -> list[RoundResult]:
    """Two reconcilers' rounds at once."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(
            pool.map(
                lambda _: reconcile_round(app, settings, client=client, sessions=sessions),
                range(2),
            )
        )


def test_a_lost_task_is_published_again_once_when_two_reconcilers_race(
    broker: tuple[redis.Redis, Celery, Settings], sessions: Sessions
) -> None:
    client, app, settings = broker
    _sent_an_hour_ago(sessions, "lost-1")
    rounds = _racing_rounds(client, app, settings, sessions)
    assert _published(client) == ["lost-1"]
    assert sum(sum(r.acted.values()) for r in rounds) == 1
    with sessions() as session:
        row = session.get(TaskRecord, "lost-1")
        assert row is not None
        assert (row.state, row.reconcile_reason) == ("PENDING", "lost")
        assert row.reconciled_at is not None
    # Published again, it waits in its queue: the next round leaves it alone.
    assert sum(reconcile_round(app, settings, client=client, sessions=sessions).acted.values()) == 0


def test_a_task_a_live_worker_holds_is_never_published_again(
    broker: tuple[redis.Redis, Celery, Settings], sessions: Sessions
) -> None:
    client, app, settings = broker
    _sent_an_hour_ago(sessions, "held-1", state="STARTED", worker="w@a")
    _sent_an_hour_ago(sessions, "held-2")  # reserved ahead by the same worker
    heartbeats.record_worker(client, "w@a", ["notifications"], {}, 15, now=time.time())
    recovery.note_reserved(client, "w@a", ["held-2"], 3600)
    result = reconcile_round(app, settings, client=client, sessions=sessions)
    assert (result.checked, result.held, _published(client)) == (2, 2, [])


def test_a_task_that_cannot_run_again_ends_failure_with_the_reason(
    broker: tuple[redis.Redis, Celery, Settings], sessions: Sessions
) -> None:
    client, app, settings = broker
    _sent_an_hour_ago(sessions, "renamed", name="a_task_renamed_since")
    _sent_an_hour_ago(sessions, "invalid", kwargs={"title": ""})
    reconcile_round(app, settings, client=client, sessions=sessions)
    assert _published(client) == []
    with sessions() as session:
        renamed, invalid = session.get(TaskRecord, "renamed"), session.get(TaskRecord, "invalid")
        assert renamed is not None and invalid is not None
        assert (renamed.state, renamed.reconcile_reason) == ("FAILURE", "contract_gone")
        assert "a_task_renamed_since" in (renamed.error or "")
        assert (invalid.state, invalid.reconcile_reason) == ("FAILURE", "invalid_arguments")
        assert invalid.finished_at is not None


def test_a_redis_that_just_came_back_empty_settles_before_anything_is_decided(
    broker: tuple[redis.Redis, Celery, Settings], sessions: Sessions
) -> None:
    client, app, settings = broker
    client.flushall()
    _sent_an_hour_ago(sessions, "lost-2")
    assert reconcile_round(app, settings, client=client, sessions=sessions).settling
    assert _published(client) == []


def _received(app: Celery, task_ids: list[str], ago: float = 0) -> None:
    """Publish `task_ids` and take them off `notifications` unacknowledged, `ago` seconds ago, as a
    worker whose life or connection then ended does."""
    with app.connection_for_write() as conn, pytest.MonkeyPatch.context() as patch:
        # kombu stamps a delivery in `unacked_index` with this clock
        patch.setattr(kombu_redis, "time", lambda: time.time() - ago)
        channel = conn.default_channel
        channel.qos.restore_at_shutdown = False  # nothing handed back
        for task_id in task_ids:
            app.send_task(
                contracts.SEND_SYSTEM_NOTIFICATION.name, task_id=task_id, queue="notifications"
            )
            message = channel.basic_get("notifications", no_ack=False)
            assert message is not None and message.headers["id"] == task_id


def _unacked(client: redis.Redis) -> set[str]:
    return {orjson.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")}


def test_unacked_entries_nobody_holds_go_back_once_and_held_or_young_ones_stay(
    broker: tuple[redis.Redis, Celery, Settings], sessions: Sessions
) -> None:
    client, app, settings = broker
    for task_id in ("orphan", "noted", "young"):
        _sent_an_hour_ago(sessions, task_id)
    _sent_an_hour_ago(sessions, "ended", state="SUCCESS")
    _sent_an_hour_ago(sessions, "retried", state="RETRY", retries=1)
    _received(app, ["orphan", "noted", "ended", "retried"], ago=3600)
    _received(app, ["young"])  # its worker may not have noted it yet
    heartbeats.record_worker(client, "w@a", ["notifications"], {}, 15, now=time.time())
    recovery.note_reserved(client, "w@a", ["noted"], 3600)
    rounds = _racing_rounds(client, app, settings, sessions)
    assert _published(client) == ["orphan"]
    # an ended task's entry is a lost acknowledgement, a retried one's a superseded message
    assert _unacked(client) == {"noted", "young"}
    assert sum(r.acted[("notifications", Reason.ORPHANED_UNACKED)] for r in rounds) == 1
    assert sum(sum(r.acted.values()) for r in rounds) == 1
    assert counts(client) == {("notifications", "orphaned_unacked"): 1}
    with sessions() as session:
        row = session.get(TaskRecord, "orphan")
        assert row is not None and row.reconcile_reason == "orphaned_unacked"
    # waiting in its queue again: the next round publishes nothing
    assert sum(reconcile_round(app, settings, client=client, sessions=sessions).acted.values()) == 0


def test_entries_held_for_long_never_hide_an_orphan_behind_them(
    broker: tuple[redis.Redis, Celery, Settings], sessions: Sessions
) -> None:
    client, app, settings = broker
    small_batches = settings.reconcile.model_copy(update={"batch_size": 2})
    settings = settings.model_copy(update={"reconcile": small_batches})
    held = [f"long-{n}" for n in range(3)]
    for task_id in [*held, "orphan"]:
        _sent_an_hour_ago(sessions, task_id)
    _received(app, held, ago=7200)  # a long task, countdowns: delivered first, held all along
    _received(app, ["orphan"], ago=3600)
    heartbeats.record_worker(client, "w@a", ["notifications"], {}, 15, now=time.time())
    recovery.note_reserved(client, "w@a", held, 3600)
    for _ in range(2):  # one batch of held entries, then the rest
        reconcile_round(app, settings, client=client, sessions=sessions)
    assert _published(client) == ["orphan"]
    assert _unacked(client) == set(held)
