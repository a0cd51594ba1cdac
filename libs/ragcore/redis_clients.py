"""The one way this code base opens Redis: bounded connect and read times, dead connections noticed.

redis-py's defaults wait forever on a Redis that accepted the connection and stopped answering (a
failover, a full network buffer); every client here gives up after the configured seconds instead.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from ragcore.settings import get_settings


def redis_client(url: str, read_timeout: float | None = None) -> redis.Redis:
    """One client (and connection pool) per URL and read timeout per process.

    `read_timeout` overrides the configured one for a caller with its own budget (the hot query
    cache).
    """
    settings = get_settings()
    return _client(
        url,
        settings.redis_connect_timeout_seconds,
        read_timeout if read_timeout is not None else settings.redis_read_timeout_seconds,
        settings.redis_health_check_seconds,
    )


def redis_options() -> dict[str, float]:
    """The keyword arguments of every client: for a client made elsewhere (RedBeat's, from its
    `redbeat_redis_options`)."""
    settings = get_settings()
    return _options(
        settings.redis_connect_timeout_seconds,
        settings.redis_read_timeout_seconds,
        settings.redis_health_check_seconds,
    )


def _options(connect_timeout: float, read_timeout: float, health_check: int) -> dict[str, float]:
    return {
        # A caller's short budget (the hot cache's) covers connecting too.
        "socket_connect_timeout": min(connect_timeout, read_timeout),
        "socket_timeout": read_timeout,
        # A pooled connection idle this long is pinged before use: one a restart or a NAT dropped
        # fails the ping, not the caller's command.
        "health_check_interval": health_check,
    }


@lru_cache
def _client(
    url: str, connect_timeout: float, read_timeout: float, health_check: int
) -> redis.Redis:
    return redis.Redis.from_url(url, **_options(connect_timeout, read_timeout, health_check))
