"""The broker's Redis client."""

from __future__ import annotations

import redis

from ragcore.redis_clients import redis_client
from ragcore.settings import RedisSettings


def broker_client(redis_settings: RedisSettings) -> redis.Redis:
    """One client (and connection pool) per broker URL per process."""
    return redis_client(redis_settings, redis_settings.broker)
