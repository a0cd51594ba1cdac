"""A lost worker's tasks are claimed once, by one live worker, never while it still beats, and
claimed again if the claimer fails between the claim and the re-queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from ragcore.broker import depths, heartbeats, in_flight
from ragcore.broker import held as held_module
from ragcore.db import create_schema, reset_engines
from ragcore.settings import get_settings
from ragcore.worker import recovery
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import redis_server

LOST = "dead@a"


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def test_a_lost_worker_is_claimed_by_exactly_one_of_many_live_workers(
    client: redis.Redis,
) -> None:
    now = heartbeats.server_time(client)
    heartbeats.record_worker(client, LOST, ["sync"], {}, 15, now=now - 120)
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(
            pool.map(
                lambda i: recovery.claim_lost(client, "sync", LOST, now - 60, f"live{i}@a", 30),
                range(8),
            )
        )
    assert claims.count(True) == 1


def test_a_worker_that_still_beats_is_never_claimed(client: redis.Redis) -> None:
    now = heartbeats.server_time(client)
    heartbeats.record_worker(client, "slow@a", ["sync"], {}, 15, now=now - 120)
    # it beat again before the claim
    heartbeats.record_worker(client, "slow@a", ["sync"], {}, 15, now=now)
    assert not recovery.claim_lost(client, "sync", "slow@a", now - 60, "live@a", 30)
    assert heartbeats.lost_workers(client, "sync", now - 60) == []


def test_beats_and_lapses_are_on_the_redis_servers_clock(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # this machine's clock lags the server's by an hour: a beat is still current
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    heartbeats.record_worker(client, "skewed@a", ["sync"], {}, 15)
    assert heartbeats.live_workers(client, 15) == {"skewed@a"}
    assert heartbeats.lost_workers(client, "sync", heartbeats.server_time(client) - 60) == []


def test_the_in_flight_list_counts_what_every_worker_of_the_queue_holds(
    client: redis.Redis,
) -> None:
    assert in_flight.note_in_flight(client, "sync", "a@x", ["t1", "t2"]) == 2
    assert in_flight.note_in_flight(client, "sync", "b@x", ["t3"]) == 3
    assert in_flight.note_in_flight(client, "sync", "a@x", []) == 1
    assert client.lrange(in_flight.IN_FLIGHT_KEY.format(queue="sync"), 0, -1) == [b"t3"]


def test_queues_flag_a_lost_worker_only_while_the_tasks_it_held_wait(client: redis.Redis) -> None:
    now = time.time()
    heartbeats.record_worker(client, "idle@a", ["sync"], {}, 15, now=now - 30)
    heartbeats.record_worker(client, "busy@a", ["sync"], {}, 15, now=now - 30)
    in_flight.note_in_flight(client, "sync", "busy@a", ["t1"])
    assert depths.queue_stats(client, "sync", 15, now).lost == [("busy@a", now - 30)]
    # what the claim does once it re-queued them
    in_flight.note_in_flight(client, "sync", "busy@a", [])
    assert depths.queue_stats(client, "sync", 15, now).lost == []


@dataclass
class Broker:
    """A real Redis broker, a lost worker's messages in its `unacked` hash, and the ledger."""

    app: Celery
    client: redis.Redis

    def receive(self, count: int) -> list[str]:
        """Take `count` messages off `sync` unacknowledged, as a worker does; their task ids."""
        ids = []
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            # a worker killed, not stopped: it never hands back what it holds
            channel.qos.restore_at_shutdown = False
            for _ in range(count):
                message = channel.basic_get("sync", no_ack=False)
                assert message is not None
                ids.append(message.headers["id"])
        return ids

    def queued(self) -> list[str]:
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            ids = []
            while (message := channel.basic_get("sync", no_ack=True)) is not None:
                ids.append(message.headers["id"])
        return ids


@pytest.fixture()
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    with redis_server() as server:
        database = f"sqlite:///{tmp_path}/ledger.db"
        monkeypatch.setenv("RAGCORE_DATABASE_URL", database)
        get_settings.cache_clear()
        reset_engines()
        create_schema(database)
        app = Celery("recovery-test", broker=server.url)
        client = redis.Redis.from_url(server.url)
        for i in range(3):
            app.send_task("ragcore.canary.sync", task_id=f"t{i}", queue="sync")
        yield Broker(app, client)
        app.close()
        get_settings.cache_clear()
        reset_engines()


def _lose(broker: Broker, held: list[str]) -> None:
    now = heartbeats.server_time(broker.client)
    heartbeats.record_worker(broker.client, LOST, ["sync"], {}, 15, now=now - 120)
    recovery.note_reserved(broker.client, LOST, held, 3600)


def test_a_claim_whose_requeue_fails_on_a_database_blip_is_claimed_again(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = broker.receive(3)
    _lose(broker, held)
    real = recovery.started_task_ids

    def blip(hostname: str) -> set[str]:
        raise ConnectionError("the database blinked")

    monkeypatch.setattr(recovery, "started_task_ids", blip)
    assert recovery.requeue_lost(broker.app, broker.client, "sync", 60, "live@a") == {}
    # still lost, still holding: the next beat (or another worker) claims it again
    assert [host for host, _ in heartbeats.lost_workers(broker.client, "sync", time.time())] == [
        LOST
    ]
    monkeypatch.setattr(recovery, "started_task_ids", real)
    restored = recovery.requeue_lost(broker.app, broker.client, "sync", 60, "live@a")
    assert sorted(restored[LOST]) == sorted(held)
    assert sorted(broker.queued()) == sorted(held)
    assert heartbeats.lost_workers(broker.client, "sync", time.time()) == []


def test_a_claimer_that_dies_half_way_leaves_the_rest_to_the_next_and_nothing_twice(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = broker.receive(3)
    _lose(broker, held)
    real = held_module.move_back
    moved: list[str] = []

    def die_after_one(channel: Any, tag: str, task_id: str, *rest: Any) -> bool:
        if moved:
            raise KeyboardInterrupt  # the claimer's process dies: no handler of ours runs
        moved.append(task_id)
        return real(channel, tag, task_id, *rest)

    monkeypatch.setattr(held_module, "move_back", die_after_one)
    with pytest.raises(KeyboardInterrupt):
        recovery.requeue_lost(broker.app, broker.client, "sync", 1, "first@a")
    monkeypatch.setattr(held_module, "move_back", real)
    # A live worker receives the message re-queued before the death: it holds it now.
    assert broker.receive(1) == moved

    # The dead claimer's claim lapses (its lifetime: the lost-after time), then another claims.
    restored = wait_until(
        lambda: recovery.requeue_lost(broker.app, broker.client, "sync", 1, "second@a"),
        30,
        "the claim to lapse and a second claimer to claim",
    )
    assert sorted(restored[LOST]) == sorted(set(held) - set(moved))
    # nothing taken back from the live worker that received the first one
    assert sorted(broker.queued()) == sorted(set(held) - set(moved))
    assert heartbeats.lost_workers(broker.client, "sync", time.time()) == []
