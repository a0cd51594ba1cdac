"""The Redis client factory bounds every wait (a hung Redis is an error in seconds, not a stuck
worker) and, through Sentinel, follows the master across a failover."""

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from ragcore import redis_clients
from ragcore.redis_clients import redis_client
from ragcore.settings import RedisSettings, get_settings
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import SentinelCluster, sentinel_cluster


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a Redis that hangs after a failover or a network
    fault."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def test_a_redis_that_accepts_but_never_answers_fails_within_the_read_timeout(
    silent_server: str,
) -> None:
    client = redis_client(RedisSettings(), silent_server, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 3


def test_one_client_per_url_and_timeout_and_every_client_checks_idle_connections(
    silent_server: str,
) -> None:
    assert redis_client(RedisSettings(), silent_server) is redis_client(
        RedisSettings(), silent_server
    )
    assert redis_client(RedisSettings(), silent_server, read_timeout=0.3) is not redis_client(
        RedisSettings(), silent_server
    )
    options = redis_client(RedisSettings(), silent_server).connection_pool.connection_kwargs
    assert (
        options["socket_timeout"]
        and options["socket_connect_timeout"]
        and options["health_check_interval"]
    )


@pytest.fixture
def sentinels(monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelCluster]:
    with sentinel_cluster() as cluster:
        monkeypatch.setenv("RAGCORE_REDIS_SENTINELS", cluster.nodes)
        monkeypatch.setenv("RAGCORE_REDIS_SENTINEL_MASTER", cluster.master)
        get_settings.cache_clear()
        yield cluster
    get_settings.cache_clear()


def test_through_sentinel_a_client_reaches_the_promoted_replica_after_the_primary_dies(
    sentinels: SentinelCluster,
) -> None:
    client = redis_client(get_settings().redis, get_settings().redis.broker)
    client.set("before", 1)
    assert client.info("server")["tcp_port"] == sentinels.primary.port
    options = client.connection_pool.connection_kwargs
    assert options["socket_timeout"] and options["socket_connect_timeout"]
    sentinels.primary.kill()

    def written() -> bool:
        try:
            return bool(client.set("after", 2))
        except redis.ConnectionError:  # the dead primary, then no master until the promotion
            return False

    wait_until(written, 30, "a write on the promoted replica")
    assert client.info("server")["tcp_port"] == sentinels.replica.port
    assert client.get("before") == b"1"  # replicated before the kill


def test_kombu_celery_and_redbeat_get_the_timeouts_and_with_sentinel_the_master_and_sentinels() -> (
    None
):
    plain = RedisSettings()
    assert redis_clients.transport_options(plain) == {
        "socket_timeout": plain.read_timeout_seconds,
        "socket_connect_timeout": plain.connect_timeout_seconds,
    }
    assert redis_clients.redbeat_options(plain)[0] == plain.broker
    guarded = RedisSettings(
        url="redis://:pw@x/2",
        sentinels="s1:1,s2:2",
        sentinel_master="m",
        sentinel_password="sp",
    )
    options = redis_clients.transport_options(guarded)
    assert options["master_name"] == "m" and options["sentinel_kwargs"]["password"] == "sp"
    assert options["sentinel_kwargs"]["socket_timeout"] == guarded.read_timeout_seconds
    url, beat = redis_clients.redbeat_options(guarded)
    assert url == "redis-sentinel://"
    assert (beat["sentinels"], beat["service_name"], beat["db"], beat["password"]) == (
        [("s1", 1), ("s2", 2)],
        "m",
        2,
        "pw",
    )
