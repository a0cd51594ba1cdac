"""Non-blocking Redis locks that keep two runs of one periodic task from overlapping.

`SET key token NX EX ttl` takes the lock or fails at once (a second run skips, it never waits);
only the run holding the token releases it, so a run that outlived its TTL cannot free the lock
of the run that took over. A crashed holder's lock frees itself after `ttl` seconds: pass at
least the task's hard time limit, so a lock never expires under a run still going.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ragcore.redis_clients import redis_client
from ragcore.settings import RedisSettings

PREFIX = "ragcore:lock:"

# Delete the key only if it still holds our token (atomic compare-and-delete).
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def lock_key(name: str) -> str:
    return PREFIX + name


@contextmanager
def periodic_lock(client: redis.Redis, name: str, ttl: int) -> Iterator[bool]:
    """`with periodic_lock(r, "cleanup_old_cache", 600) as acquired:` — False means another run
    holds it."""
    key, token = lock_key(name), uuid.uuid4().hex
    acquired = bool(client.set(key, token, nx=True, ex=ttl))
    try:
        yield acquired
    finally:
        if acquired:
            client.eval(_RELEASE, 1, key, token)


def lock_client(redis_settings: RedisSettings) -> redis.Redis:
    """The Redis that holds locks: the broker's, which must never evict keys (a cache Redis may)."""
    return redis_client(redis_settings, redis_settings.broker)


# Take every key or none (atomic): a holder of some waiting for the rest could deadlock another.
_ACQUIRE_ALL = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then return 0 end
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
end
return 1
"""
_RELEASE_ALL = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


@contextmanager
def all_locks(client: redis.Redis, names: list[str], ttl: int) -> Iterator[bool]:
    """`periodic_lock` over several names at once: all of them taken, or none (False)."""
    keys, token = [lock_key(name) for name in names], uuid.uuid4().hex
    acquired = not keys or bool(client.eval(_ACQUIRE_ALL, len(keys), *keys, token, ttl))
    try:
        yield acquired
    finally:
        if acquired and keys:
            client.eval(_RELEASE_ALL, len(keys), *keys, token)
