"""The Redis client factory bounds every wait: a hung Redis is an error in seconds, not a stuck
worker."""

import socket
import time
from collections.abc import Iterator

import pytest
import redis

from ragcore.redis_clients import redis_client


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
    client = redis_client(silent_server, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 3


def test_one_client_per_url_and_timeout_and_every_client_checks_idle_connections(
    silent_server: str,
) -> None:
    assert redis_client(silent_server) is redis_client(silent_server)
    assert redis_client(silent_server, read_timeout=0.3) is not redis_client(silent_server)
    options = redis_client(silent_server).connection_pool.connection_kwargs
    assert (
        options["socket_timeout"]
        and options["socket_connect_timeout"]
        and options["health_check_interval"]
    )
