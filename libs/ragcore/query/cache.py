"""The query cache and the data version that keeps it honest.

Every effective sync bumps the data version (a row in the database, so a Redis flush cannot roll
it back); cache keys include it, so an answer built from data that a later sync changed is never
served. Hot entries live in Redis under `<cache_prefix>v<version>:<digest>` with a TTL; the
`query_cache` table is the durable record that `cleanup_query_cache` trims.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ragcore.db import insert_for
from ragcore.db.models import SyncState

DATA_VERSION_KEY = "data"


def data_version(session: Session) -> int:
    return session.scalar(select(SyncState.version).where(SyncState.key == DATA_VERSION_KEY)) or 0


def bump_data_version(session: Session) -> None:
    """Called in the transaction of every sync that changed what Qdrant holds."""
    insert = insert_for(session)
    session.execute(
        insert(SyncState).values(key=DATA_VERSION_KEY, version=0).on_conflict_do_nothing()
    )
    session.execute(
        update(SyncState)
        .where(SyncState.key == DATA_VERSION_KEY)
        .values(version=SyncState.version + 1)
    )


def cache_key(version: int, query: str, top_k: int, filters: dict[str, Any] | None) -> str:
    canonical = orjson.dumps(
        {"q": " ".join(query.lower().split()), "k": top_k, "f": filters or {}},
        option=orjson.OPT_SORT_KEYS,
    )
    return f"v{version}:{hashlib.sha256(canonical).hexdigest()}"


class HotCache:
    """Redis copies of cached answers, under our own prefix (never broker or result keys)."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl_seconds

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(self.prefix + key)
        return orjson.loads(raw) if raw else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.client.set(self.prefix + key, orjson.dumps(value), ex=self.ttl)

    def version_of(self, redis_key: bytes | str) -> int | None:
        """The data version a Redis key was built for, or None if the key is not ours."""
        name = redis_key.decode() if isinstance(redis_key, bytes) else redis_key
        if not name.startswith(self.prefix + "v"):
            return None
        head = name[len(self.prefix) + 1 :].split(":", 1)[0]
        return int(head) if head.isdigit() else None
