"""The one way this code base opens Redis: bounded connect and read times, dead connections noticed,
and, with Redis Sentinel configured, always the current master.

redis-py's defaults wait forever on a Redis that accepted the connection and stopped answering (a
failover, a full network buffer); every client here gives up after the configured seconds instead.
With `RAGCORE_REDIS_SENTINELS` the Redis URLs are `sentinel://` ones (ragcore.settings), and a
client asks the sentinels for the master before each new connection: after a failover its next
command reaches the promoted replica. Celery's transport, its result backend and RedBeat open their
own connections; `transport_options` and `redbeat_options` give them the same timeouts and
sentinels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from ragcore.settings import RedisSettings

SENTINEL_SCHEME = "sentinel"


def redis_client(
    redis_settings: RedisSettings, url: str, read_timeout: float | None = None
) -> redis.Redis:
    """One client (and connection pool) per URL and read timeout per process, with the timeouts
    and sentinels of `redis_settings`.

    `read_timeout` overrides the configured one for a caller with its own budget (the hot query
    cache).
    """
    return _client(
        url,
        redis_settings.connect_timeout_seconds,
        read_timeout if read_timeout is not None else redis_settings.read_timeout_seconds,
        redis_settings.health_check_seconds,
        redis_settings.sentinel_master,
        redis_settings.sentinel_password,
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
    url: str,
    connect_timeout: float,
    read_timeout: float,
    health_check: int,
    master: str,
    sentinel_password: str | None,
) -> redis.Redis:
    options = _options(connect_timeout, read_timeout, health_check)
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        nodes, db, username, password = _sentinel_url(url)
        timeouts = {k: options[k] for k in ("socket_connect_timeout", "socket_timeout")}
        sentinel = Sentinel(
            nodes, sentinel_kwargs={**timeouts, "password": sentinel_password}, **timeouts
        )
        client: redis.Redis = sentinel.master_for(
            master,
            db=db,
            username=username,
            password=password,
            health_check_interval=health_check,
        )
        return client
    return redis.Redis.from_url(url, **options)


def _sentinel_url(url: str) -> tuple[list[tuple[str, int]], int, str | None, str | None]:
    """Sentinels, database, user and password of `sentinel://[u:p@]h:p/db;sentinel://...`."""
    chunks = [urlsplit(chunk) for chunk in url.split(";")]
    first = chunks[0]
    nodes = [(c.hostname or "127.0.0.1", c.port or 26379) for c in chunks]
    db = int(first.path.lstrip("/") or 0)
    user = unquote(first.username) if first.username else None
    password = unquote(first.password) if first.password else None
    return nodes, db, user, password


def _timeouts(redis_settings: RedisSettings) -> dict[str, float]:
    return {
        "socket_timeout": redis_settings.read_timeout_seconds,
        "socket_connect_timeout": redis_settings.connect_timeout_seconds,
    }


def sentinel_kwargs(redis_settings: RedisSettings) -> dict[str, Any]:
    """How to talk to the sentinels themselves: the same timeouts, their own password."""
    options: dict[str, Any] = _timeouts(redis_settings)
    if redis_settings.sentinel_password:
        options["password"] = redis_settings.sentinel_password
    return options


def transport_options(redis_settings: RedisSettings) -> dict[str, Any]:
    """What kombu's Redis transport and Celery's result backend take besides their URL: the
    timeouts, and with Sentinel the master's name and the sentinels' options."""
    options: dict[str, Any] = _timeouts(redis_settings)
    if redis_settings.sentinels:
        options |= {
            "master_name": redis_settings.sentinel_master,
            "sentinel_kwargs": sentinel_kwargs(redis_settings),
        }
    return options


def redbeat_options(redis_settings: RedisSettings) -> tuple[str, dict[str, Any]]:
    """RedBeat's URL and `redbeat_redis_options`: it opens its own client, from these.

    RedBeat takes sentinels as a `redis-sentinel://` URL and options (its `Sentinel(...)` gives the
    master connection its `socket_timeout`, which redis-py also uses for connecting).
    """
    timeouts = _timeouts(redis_settings)
    if not redis_settings.sentinels:
        return redis_settings.broker, {
            **timeouts,
            "health_check_interval": redis_settings.health_check_seconds,
        }
    _, db, username, password = _sentinel_url(redis_settings.broker)
    return "redis-sentinel://", {
        "sentinels": redis_settings.sentinel_nodes,
        "service_name": redis_settings.sentinel_master,
        "db": db,
        "username": username,
        "password": password,
        "socket_timeout": timeouts["socket_timeout"],
        "sentinel_kwargs": sentinel_kwargs(redis_settings),
    }


def sentinel_view(redis_settings: RedisSettings) -> tuple[set[str], list[redis.Redis]] | None:
    """What the first sentinel to answer says: the masters it knows, and a client of each replica
    of ours (the brokers a failover may promote). None when none answers, or without Sentinel."""
    if not redis_settings.sentinels:
        return None
    sentinel = Sentinel(
        redis_settings.sentinel_nodes, sentinel_kwargs=sentinel_kwargs(redis_settings)
    )
    for node in sentinel.sentinels:
        try:
            masters = {str(name) for name in node.sentinel_masters()}
        except redis.RedisError:
            continue  # another sentinel may answer
        _, db, username, password = _sentinel_url(redis_settings.broker)
        replicas = [
            redis.Redis(
                host,
                port,
                db,
                username=username,
                password=password,
                socket_timeout=redis_settings.read_timeout_seconds,
                socket_connect_timeout=redis_settings.connect_timeout_seconds,
            )
            for host, port in sentinel.discover_slaves(redis_settings.sentinel_master)
        ]
        return masters, replicas
    return None
