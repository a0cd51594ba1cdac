"""What must hold before a deployable starts; it refuses to start, saying why, when one does not."""

from __future__ import annotations

import logging

import redis

from ragcore import redis_clients
from ragcore.settings import Settings
from ragcore.tasks import contracts
from ragcore.tasks.contracts import Queue

log = logging.getLogger(__name__)


class InvariantError(RuntimeError):
    """A start-up invariant failed; the message says which and how to fix it."""


def visibility_timeout_problem(settings: Settings) -> str | None:
    longest = contracts.longest_time_limit()
    if settings.visibility_timeout_seconds <= longest:
        return (
            f"the visibility timeout ({settings.visibility_timeout_seconds}s) "
            f"must exceed the longest task time limit ({longest}s), "
            "or Redis redelivers tasks that are still running"
        )
    return None


def eviction_problem(client: redis.Redis, which: str = "the broker's Redis") -> str | None:
    """The broker's Redis must never evict keys: an evicted queue list loses every task in it.

    Volatile policies evict only keys with a TTL, and the broker's lists have none; `allkeys-*` may
    evict anything. A Redis that hides CONFIG (some managed services) or is down cannot be judged
    here: that is logged, not refused (a broker outage is the broker's retry loop's business).
    """
    try:
        policy = str(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
    except redis.ResponseError as exc:
        log.warning(
            "cannot read the broker's maxmemory-policy (%s); make sure it does not evict keys", exc
        )
        return None
    except redis.RedisError as exc:
        log.warning("broker unreachable at start-up, its eviction policy is unchecked: %s", exc)
        return None
    if policy.startswith("allkeys-"):
        return (
            f"{which} evicts keys (maxmemory-policy={policy}): "
            "queued tasks would be lost under memory pressure; set maxmemory-policy to noeviction"
        )
    return None


def sentinel_problems(settings: Settings) -> list[str]:
    """With Sentinel: the sentinels must know our master (a mistyped name would look like a broker
    outage for ever), and no replica they may promote may evict keys. Sentinels that do not answer
    cannot be judged: logged, as a broker outage is."""
    if not settings.redis_sentinels:
        return []
    view = redis_clients.sentinel_view(settings)
    if view is None:
        log.warning("no sentinel of RAGCORE_REDIS_SENTINELS answers at start-up; unchecked")
        return []
    masters, replicas = view
    if settings.redis_sentinel_master not in masters:
        return [
            f"the sentinels know no master named {settings.redis_sentinel_master!r} "
            f"(they know {sorted(masters)}): set RAGCORE_REDIS_SENTINEL_MASTER"
        ]
    which = "a replica that Sentinel may promote to broker ({}:{})"
    found = []
    for replica in replicas:
        address = replica.connection_pool.connection_kwargs
        found.append(eviction_problem(replica, which.format(address["host"], address["port"])))
        replica.close()
    return [p for p in found if p]


def queue_contract_problems() -> list[str]:
    served = {c.queue for c in contracts.TASKS}
    return [f"queue {q.value!r} has no task contract" for q in Queue if q not in served]


def problems(settings: Settings, client: redis.Redis, *, api: bool = False) -> list[str]:
    found = [p for p in (visibility_timeout_problem(settings), eviction_problem(client)) if p]
    found += sentinel_problems(settings)
    if api:
        found += queue_contract_problems()
    return found


def check(settings: Settings, client: redis.Redis, *, service: str, api: bool = False) -> None:
    """Raise InvariantError listing every failed invariant of `service`."""
    found = problems(settings, client, api=api)
    if found:
        raise InvariantError(f"{service} refuses to start: " + "; ".join(found))
