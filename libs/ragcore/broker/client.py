"""The broker's Redis client."""

from __future__ import annotations

import redis

from ragcore.redis_clients import redis_client


def broker_client(url: str) -> redis.Redis:
    """One client (and connection pool) per broker URL per process."""
    return redis_client(url)
