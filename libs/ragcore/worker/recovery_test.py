"""A lost worker's tasks are claimed once, by one live worker, and never while it still beats."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from ragcore.broker import depths, heartbeats, in_flight
from ragcore.worker import recovery
from ragcore_dev.servers import redis_server


@pytest.fixture()
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def test_a_lost_worker_is_claimed_by_exactly_one_of_many_live_workers(
    client: redis.Redis,
) -> None:
    now = time.time()
    heartbeats.record_worker(client, "dead@a", ["sync"], {}, 15, now=now - 120)
    recovery.note_reserved(client, "dead@a", ["t1", "t2"], 3600)
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(
            pool.map(lambda _: recovery.claim_lost(client, "sync", "dead@a", now - 60), range(8))
        )
    assert [c for c in claims if c is not None] == [{"t1", "t2"}]
    assert heartbeats.lost_workers(client, "sync", now) == []  # claimed: nobody re-queues it again


def test_a_worker_that_still_beats_is_never_claimed(client: redis.Redis) -> None:
    now = time.time()
    heartbeats.record_worker(client, "slow@a", ["sync"], {}, 15, now=now - 120)
    # it beat again before the claim
    heartbeats.record_worker(client, "slow@a", ["sync"], {}, 15, now=now)
    assert recovery.claim_lost(client, "sync", "slow@a", now - 60) is None
    assert heartbeats.lost_workers(client, "sync", now - 60) == []


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
