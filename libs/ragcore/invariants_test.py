"""Start-up invariants: each failure is refused with a message that says what to fix."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ragcore import invariants
from ragcore.db import create_schema, migrate, schema
from ragcore.redis_clients import redbeat_options, redis_client
from ragcore.settings import RedisSettings, Settings
from ragcore.tasks import contracts
from ragcore_dev.servers import SentinelCluster, redis_server, sentinel_cluster


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis_client(RedisSettings(), server.url)


@pytest.fixture
def migrated(tmp_path: Path) -> Settings:
    """Settings on a database the migration job brought to this code's revision."""
    url = f"sqlite:///{tmp_path}/migrated.db"
    create_schema(url)
    return Settings(database_url=url)


def test_a_broker_that_evicts_any_key_is_refused(client: redis.Redis) -> None:
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(
            invariants.InvariantError, match="maxmemory-policy=allkeys-lru.*noeviction"
        ) as caught:
            invariants.check(Settings(), client, service="worker sync", database=False)
        assert str(caught.value).startswith("worker sync refuses to start")
    finally:
        client.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "volatile-lfu", "allkeys-lfu"])
def test_a_broker_that_evicts_the_keys_with_a_ttl_is_refused_too(
    client: redis.Redis, policy: str
) -> None:
    # volatile-* evicts exactly the locks, reserved notes and worker records: two Beats, overlaps
    client.config_set("maxmemory-policy", policy)
    try:
        problem = invariants.eviction_problem(client) or ""
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert (
        f"maxmemory-policy={policy}" in problem and "set maxmemory-policy to noeviction" in problem
    )


def test_a_broker_that_never_evicts_passes(client: redis.Redis, migrated: Settings) -> None:
    client.config_set("maxmemory-policy", "noeviction")
    assert invariants.eviction_problem(client) is None
    invariants.check(migrated, client, service="api", api=True)  # raises on any problem


def test_sqlite_in_prod_is_refused_naming_the_setting() -> None:
    prod = Settings.model_construct(environment="prod", database_url="sqlite:///./ragcore.db")
    problem = invariants.sqlite_in_prod_problem(prod) or ""
    assert "RAGCORE_DATABASE_URL is SQLite with RAGCORE_ENVIRONMENT=prod" in problem
    assert "PostgreSQL" in problem
    postgres = Settings.model_construct(
        environment="prod", database_url="postgresql://ragcore@db/ragcore"
    )
    assert invariants.sqlite_in_prod_problem(postgres) is None
    assert invariants.sqlite_in_prod_problem(Settings(database_url="sqlite:///x.db")) is None


def test_a_redis_client_without_timeouts_is_refused_by_name(
    client: redis.Redis, migrated: Settings
) -> None:
    bare = redis.Redis.from_url("redis://127.0.0.1:1/0")  # redis-py's defaults: wait forever
    with pytest.raises(invariants.InvariantError) as caught:
        invariants.check(migrated, client, service="beat", redis_clients={"RedBeat's client": bare})
    assert "RedBeat's client has no socket_connect_timeout and no socket_timeout" in str(
        caught.value
    )
    assert "RAGCORE_REDIS_READ_TIMEOUT_SECONDS" in str(caught.value)
    assert invariants.timeout_problems({"ours": client}) == []


def test_beats_redbeat_client_has_the_timeouts() -> None:
    url, options = redbeat_options(RedisSettings(read_timeout_seconds=7))
    redbeat = redis.Redis.from_url(url, **options)
    assert redbeat.connection_pool.connection_kwargs["socket_timeout"] == 7
    assert invariants.timeout_problems({"RedBeat's": redbeat}) == []


def test_a_database_behind_this_code_is_refused_naming_the_revision_and_the_command(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    migrate.upgrade(url, "0004")
    problem = invariants.schema_problem(Settings(database_url=url)) or ""
    assert f"is at migration revision 0004 and this version needs revision {schema.revision()}" in (
        problem
    )
    assert "python -m ragcore.db.migrate" in problem
    empty = invariants.schema_problem(Settings(database_url=f"sqlite:///{tmp_path}/empty.db"))
    assert "has no migration revision" in (empty or "")


def test_an_unreachable_broker_is_not_judged() -> None:
    down = redis.Redis(port=1, socket_connect_timeout=0.2)
    assert invariants.eviction_problem(down) is None


def test_a_visibility_timeout_not_above_the_longest_time_limit_is_refused() -> None:
    settings = Settings(
        redis=RedisSettings(visibility_timeout_seconds=contracts.longest_time_limit())
    )
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
    return Settings(redis=RedisSettings(sentinels=cluster.nodes, sentinel_master=master))


def test_through_sentinel_a_replica_that_evicts_is_refused_as_the_broker_it_may_become(
    sentinels: SentinelCluster,
) -> None:
    settings = _through(sentinels, sentinels.master)
    master = redis_client(settings.redis, settings.redis.broker)
    assert master.info("server")["tcp_port"] == sentinels.primary.port
    # database=False: the schema's own invariant has its test; this one is about the replica.
    invariants.check(settings, master, service="api", api=True, database=False)
    replica = redis.Redis(port=sentinels.replica.port)
    replica.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(invariants.InvariantError, match=f"127.0.0.1:{sentinels.replica.port}"):
            invariants.check(settings, master, service="api", database=False)
    finally:
        replica.config_set("maxmemory-policy", "noeviction")


def test_a_master_name_the_sentinels_do_not_know_is_refused_naming_the_setting(
    sentinels: SentinelCluster,
) -> None:
    settings = _through(sentinels, "mistyped")
    with pytest.raises(invariants.InvariantError, match="RAGCORE_REDIS_SENTINEL_MASTER"):
        invariants.check(
            settings,
            redis_client(settings.redis, settings.redis.broker, read_timeout=1),
            service="api",
        )


def test_sentinels_that_do_not_answer_are_not_judged() -> None:
    assert (
        invariants.sentinel_problems(Settings(redis=RedisSettings(sentinels="127.0.0.1:1"))) == []
    )
