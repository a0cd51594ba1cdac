"""Stop flags: a worker tells its tasks it is shutting down (its pool processes hear no signal of
it)."""

from __future__ import annotations

import redis

_STOPPING_KEY = "ragcore:stopping:{hostname}"


def note_stopping(client: redis.Redis, hostname: str, ttl: int) -> None:
    client.set(_STOPPING_KEY.format(hostname=hostname), 1, ex=ttl)


def clear_stopping(client: redis.Redis, hostname: str) -> None:
    client.delete(_STOPPING_KEY.format(hostname=hostname))


def is_stopping(client: redis.Redis, hostname: str) -> bool:
    return bool(client.exists(_STOPPING_KEY.format(hostname=hostname)))
