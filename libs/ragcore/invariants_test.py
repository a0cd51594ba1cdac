"""Start-up invariants: each failure is refused with a message that says what to fix."""

from collections.abc import Iterator

import pytest
import redis

from ragcore import invariants
from ragcore.redis_clients import redis_client
from ragcore.settings import Settings
from ragcore.tasks import contracts
from ragcore_dev.servers import SentinelCluster, redis_server, sentinel_cluster


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def test_a_broker_that_evicts_any_key_is_refused(client: redis.Redis) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(
            invariants.InvariantError, match="maxmemory-policy=allkeys-lru.*noeviction"
        ) as caught:
            invariants.check(Settings(), client, service="worker sync")
        assert str(caught.value).startswith("worker sync refuses to start")
    finally:
        client.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru"])
def test_a_broker_that_never_evicts_its_lists_passes(client: redis.Redis, policy: str) -> None:
    client.config_set("maxmemory-policy", policy)
    try:
        invariants.check(Settings(), client, service="api", api=True)
    finally:
        client.config_set("maxmemory-policy", "noeviction")


def test_an_unreachable_broker_is_not_judged() -> None:
    down = redis.Redis(port=1, socket_connect_timeout=0.2)
    assert invariants.eviction_problem(down) is None


def test_a_visibility_timeout_not_above_the_longest_time_limit_is_refused() -> None:
    settings = Settings(visibility_timeout_seconds=contracts.longest_time_limit())
    assert "must exceed the longest task time limit" in (
        invariants.visibility_timeout_problem(settings) or ""
    )
    assert invariants.visibility_timeout_problem(Settings()) is None


def test_every_queue_has_a_contract() -> None:
    assert invariants.queue_contract_problems() == []


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelCluster]:
    with sentinel_cluster() as cluster:
        yield cluster


def _through(cluster: SentinelCluster, master: str) -> Settings:
    return Settings(redis_sentinels=cluster.nodes, redis_sentinel_master=master)


def test_through_sentinel_a_replica_that_evicts_is_refused_as_the_broker_it_may_become(
    sentinels: SentinelCluster,
) -> None:
    settings = _through(sentinels, sentinels.master)
    master = redis_client(settings.broker)
    assert master.info("server")["tcp_port"] == sentinels.primary.port
    invariants.check(settings, master, service="api", api=True)
    replica = redis.Redis(port=sentinels.replica.port)
    replica.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(invariants.InvariantError, match=f"127.0.0.1:{sentinels.replica.port}"):
            invariants.check(settings, master, service="api")
    finally:
        replica.config_set("maxmemory-policy", "noeviction")


def test_a_master_name_the_sentinels_do_not_know_is_refused_naming_the_setting(
    sentinels: SentinelCluster,
) -> None:
    settings = _through(sentinels, "mistyped")
    with pytest.raises(invariants.InvariantError, match="RAGCORE_REDIS_SENTINEL_MASTER"):
        invariants.check(settings, redis_client(settings.broker, read_timeout=1), service="api")


def test_sentinels_that_do_not_answer_are_not_judged() -> None:
    assert invariants.sentinel_problems(Settings(redis_sentinels="127.0.0.1:1")) == []
