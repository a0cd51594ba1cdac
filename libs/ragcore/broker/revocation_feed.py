"""The revocation feed: running workers poll it for ids revoked since they last asked (the ledger
keeps every revocation; a starting worker reads that)."""

from __future__ import annotations

import time

import redis

REVOKED_KEY = "ragcore:revoked"


def publish_revocation(client: redis.Redis, task_id: str, now: float | None = None) -> None:
    """Tell running workers, through the feed they poll, that `task_id` is revoked."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.zadd(REVOKED_KEY, {task_id: now})
    # a starting worker reads the ledger
    pipe.zremrangebyscore(REVOKED_KEY, "-inf", now - 7 * 24 * 3600)
    pipe.execute()


def revocations_since(client: redis.Redis, since: float) -> tuple[list[str], float]:
    """Task ids revoked at or after `since`, and the time to ask from next."""
    rows: list[tuple[bytes, float]] = client.zrangebyscore(
        REVOKED_KEY, since, "+inf", withscores=True
    )  # type: ignore[assignment]  # redis-py types both decode modes; ours gives bytes
    ids = [member.decode() for member, _ in rows]
    latest = max((float(score) for _, score in rows), default=since)
    return ids, latest
