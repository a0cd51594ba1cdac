"""Queue depth, oldest-task age and consumers, read from a real redis-server as Celery fills it."""

import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from ragcore.broker import depths, heartbeats, revocation_feed
from ragcore.tasks import ledger  # noqa: F401  (ledger stamps every publish with its time)
from ragcore_dev.servers import redis_server


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with redis_server() as server:
        yield server.url


@pytest.fixture()
def client(server_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server_url)
    client.flushdb()
    yield client


@pytest.fixture()
def producer(server_url: str) -> Iterator[Celery]:
    app = Celery("queues-test", broker=server_url, set_as_current=False)
    app.conf.broker_transport_options = {
        "priority_steps": list(range(10)),
        "queue_order_strategy": "priority",
    }
    yield app
    app.close()


def _message(sent_at: float) -> bytes:
    return json.dumps(
        {"body": "", "headers": {"id": str(sent_at), depths.SENT_AT_HEADER: sent_at}}
    ).encode()


def test_depth_counts_every_priority_list_and_age_is_the_oldest_message(
    client: redis.Redis,
) -> None:
    now = time.time()
    client.lpush("sync", _message(now - 10))
    # priority 6: a list of its own, older message
    client.lpush("sync\x06\x166", _message(now - 100))
    client.lpush("sync\x06\x166", _message(now - 1))
    stats = depths.queue_stats(client, "sync", heartbeat_ttl=15, now=now)
    assert stats.depth == 3 and stats.oldest_age_seconds == pytest.approx(100)
    assert depths.queue_stats(client, "notifications", heartbeat_ttl=15) == depths.QueueStats(
        "notifications", 0, None, []
    )


def test_celery_publishes_carry_their_publish_time(client: redis.Redis, producer: Celery) -> None:
    before = time.time()
    producer.send_task("t", queue="user", priority=6)
    stats = depths.queue_stats(client, "user", heartbeat_ttl=15)
    assert stats.depth == 1 and client.llen("user\x06\x166") == 1
    assert depths.message_sent_at(client.lindex("user\x06\x166", -1)) == pytest.approx(
        before, abs=5
    )


def test_a_message_without_a_publish_time_has_depth_but_no_age(client: redis.Redis) -> None:
    client.lpush("cleanup", b'{"body": "", "headers": {"id": "x"}}')
    stats = depths.queue_stats(client, "cleanup", heartbeat_ttl=15)
    assert (stats.depth, stats.oldest_age_seconds) == (1, None)
    assert depths.message_sent_at(b"not json") is None


def test_consumers_are_workers_with_a_current_heartbeat(client: redis.Redis) -> None:
    now = time.time()
    heartbeats.record_worker(client, "sync@a", ["sync"], {"active": 0}, ttl=15, now=now)
    heartbeats.record_worker(client, "sync@stale", ["sync"], {"active": 0}, ttl=15, now=now - 60)
    heartbeats.record_worker(client, "user@b", ["user"], {"active": 2}, ttl=15, now=now)
    stats = depths.queue_stats(client, "sync", heartbeat_ttl=15)
    assert stats.consumers == ["sync@a"] and not stats.unconsumed
    assert heartbeats.worker_record(client, "user@b") == {"active": 2, "heartbeat": now}
    assert heartbeats.live_workers(client, 15) == {"sync@a", "user@b"}
    heartbeats.forget_worker(client, "sync@a", ["sync"])
    assert depths.queue_stats(client, "sync", heartbeat_ttl=15).unconsumed
    assert heartbeats.worker_record(client, "sync@a") is None


def test_the_revocation_feed_returns_what_was_revoked_since_a_time(client: redis.Redis) -> None:
    revocation_feed.publish_revocation(client, "old", now=100.0)
    revocation_feed.publish_revocation(client, "new", now=time.time())
    ids, latest = revocation_feed.revocations_since(client, time.time() - 10)
    assert ids == ["new"] and latest > time.time() - 10
    assert revocation_feed.revocations_since(client, latest + 1) == ([], latest + 1)
    assert client.zscore(revocation_feed.REVOKED_KEY, "old") is None  # a week-old entry was trimmed


def test_the_stalest_consumer_heartbeat_is_the_age_of_the_oldest_current_one(
    client: redis.Redis,
) -> None:
    now = time.time()
    heartbeats.record_worker(client, "cleanup@a", ["cleanup"], {}, ttl=15, now=now - 2)
    heartbeats.record_worker(client, "cleanup@b", ["cleanup"], {}, ttl=15, now=now - 9)
    stats = depths.queue_stats(client, "cleanup", heartbeat_ttl=15, now=now)
    assert stats.consumers == ["cleanup@a", "cleanup@b"]
    assert stats.stalest_heartbeat_age_seconds == pytest.approx(9)
