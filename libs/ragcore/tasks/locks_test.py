"""The periodic lock on a real redis-server: one holder at a time, released only by its owner."""

from collections.abc import Iterator

import pytest
import redis

from ragcore.tasks.locks import lock_key, periodic_lock
from ragcore_dev.servers import redis_server


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def test_a_second_run_does_not_get_the_lock_while_the_first_holds_it(client: redis.Redis) -> None:
    with periodic_lock(client, "job", ttl=60) as first:
        with periodic_lock(client, "job", ttl=60) as second:
            assert (first, second) == (True, False)
        assert client.exists(lock_key("job"))  # the loser's exit did not free the holder's lock
        with periodic_lock(client, "other-job", ttl=60) as other:
            assert other  # locks are per name
    with periodic_lock(client, "job", ttl=60) as again:
        assert again


def test_the_lock_expires_with_its_ttl(client: redis.Redis) -> None:
    with periodic_lock(client, "ttl-job", ttl=30) as acquired:
        assert acquired and 0 < client.ttl(lock_key("ttl-job")) <= 30


def test_a_run_whose_lock_expired_does_not_release_the_next_holders_lock(
    client: redis.Redis,
) -> None:
    first = periodic_lock(client, "slow-job", ttl=60)
    assert first.__enter__()
    client.delete(lock_key("slow-job"))  # as if the TTL ran out under a run that overran it
    with periodic_lock(client, "slow-job", ttl=60) as second:
        assert second
        # the overrunning first run ends while the second holds the lock
        first.__exit__(None, None, None)
        assert client.exists(lock_key("slow-job"))
    assert not client.exists(lock_key("slow-job"))
