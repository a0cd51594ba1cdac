"""What must hold before a deployable starts; it refuses to start, saying why, when one does not."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from sqlalchemy.engine import make_url

from ragcore import redis_clients
from ragcore.db import schema
from ragcore.settings import Settings
from ragcore.tasks import contracts
from ragcore.tasks.contracts import Queue

log = logging.getLogger(__name__)


class InvariantError(RuntimeError):
    """A start-up invariant failed; the message says which and how to fix it."""


def visibility_timeout_problem(settings: Settings) -> str | None:
    longest = contracts.longest_time_limit()
    if settings.redis.visibility_timeout_seconds <= longest:
        return (
            f"the visibility timeout ({settings.redis.visibility_timeout_seconds}s) "
            f"must exceed the longest task time limit ({longest}s), "
            "or Redis redelivers tasks that are still running"
        )
    return None


def eviction_problem(client: redis.Redis, which: str = "the broker's Redis") -> str | None:
    """The broker's Redis must never evict keys: an evicted queue list loses every task in it.

    `allkeys-*` may evict anything; `volatile-*` evicts exactly the keys that carry a TTL, and here
    those are what the guarantees rest on: every lock (periodic tasks, per-document sync locks, the
    breaker's probe lock, RedBeat's leader lock), reserved notes and worker records. Only
    `noeviction` keeps them. A Redis that hides CONFIG (some managed services) or is down cannot be
    judged here: that is logged, not refused (a broker outage is the broker's retry loop's
    business).
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
    if policy and policy != "noeviction":
        return (
            f"{which} evicts keys (maxmemory-policy={policy}): under memory pressure "
            "it would drop queued tasks (allkeys-*) or the locks and worker records that carry a "
            "TTL (volatile-*: overlapping exclusive tasks, two Beats); "
            "set maxmemory-policy to noeviction (CONFIG SET maxmemory-policy noeviction, and in "
            "redis.conf)"
        )
    return None


def sentinel_problems(settings: Settings) -> list[str]:
    """With Sentinel: the sentinels must know our master (a mistyped name would look like a broker
    outage for ever), and no replica they may promote may evict keys. Sentinels that do not answer
    cannot be judged: logged, as a broker outage is."""
    if not settings.redis.sentinels:
        return []
    view = redis_clients.sentinel_view(settings.redis)
    if view is None:
        log.warning("no sentinel of RAGCORE_REDIS_SENTINELS answers at start-up; unchecked")
        return []
    masters, replicas = view
    if settings.redis.sentinel_master not in masters:
        return [
            f"the sentinels know no master named {settings.redis.sentinel_master!r} "
            f"(they know {sorted(masters)}): set RAGCORE_REDIS_SENTINEL_MASTER"
        ]
    which = "a replica that Sentinel may promote to broker ({}:{})"
    found = []
    for replica in replicas:
        address = replica.connection_pool.connection_kwargs
        found.append(eviction_problem(replica, which.format(address["host"], address["port"])))
        replica.close()
    return [p for p in found if p]


def sqlite_in_prod_problem(settings: Settings) -> str | None:
    """SQLite has no row locks: `FOR UPDATE SKIP LOCKED` does nothing there, so two operators'
    re-drives or two relays send twice. Fine on a laptop, refused in prod."""
    if settings.environment == "prod" and make_url(settings.database_url).get_backend_name() == (
        "sqlite"
    ):
        return (
            "RAGCORE_DATABASE_URL is SQLite with RAGCORE_ENVIRONMENT=prod: SQLite has no row "
            "locks, so concurrent re-drives and relays would send twice; "
            "set RAGCORE_DATABASE_URL to a PostgreSQL database (postgresql://...)"
        )
    return None


def timeout_problems(clients: Mapping[str, redis.Redis]) -> list[str]:
    """Every Redis client must give up: without a connect and a read timeout, a Redis that
    accepted the connection and stopped answering (a failover) hangs its caller for good."""
    found = []
    for name, client in clients.items():
        options = client.connection_pool.connection_kwargs
        # redis-py connects within socket_timeout when no socket_connect_timeout is given
        # (RedBeat's Sentinel client passes only the former).
        missing = (
            [] if options.get("socket_timeout") else ["socket_connect_timeout", "socket_timeout"]
        )
        if missing:
            found.append(
                f"{name} has no {' and no '.join(missing)}: it would wait forever on a Redis that "
                "stopped answering; give it RAGCORE_REDIS_CONNECT_TIMEOUT_SECONDS and "
                "RAGCORE_REDIS_READ_TIMEOUT_SECONDS (ragcore.redis_clients)"
            )
    return found


def schema_problem(settings: Settings) -> str | None:
    """The database must be at this code's migration revision (or later): deployables never create
    or alter the schema, the migration job does."""
    return schema.behind(settings.database_url)


def queue_contract_problems() -> list[str]:
    served = {c.queue for c in contracts.TASKS}
    return [f"queue {q.value!r} has no task contract" for q in Queue if q not in served]


def problems(
    settings: Settings,
    client: redis.Redis,
    *,
    api: bool = False,
    database: bool = True,
    redis_clients: Mapping[str, redis.Redis] | None = None,
) -> list[str]:
    """Every failed invariant. `client` is the broker's; `redis_clients` are the deployable's
    others (RedBeat's); `database=False` only for a check that opens no database."""
    found = [
        p
        for p in (
            visibility_timeout_problem(settings),
            eviction_problem(client),
            sqlite_in_prod_problem(settings),
            schema_problem(settings) if database else None,
        )
        if p
    ]
    found += timeout_problems({"the broker's Redis client": client, **(redis_clients or {})})
    found += sentinel_problems(settings)
    if api:
        found += queue_contract_problems()
    return found


def check(
    settings: Settings,
    client: redis.Redis,
    *,
    service: str,
    api: bool = False,
    database: bool = True,
    redis_clients: Mapping[str, redis.Redis] | None = None,
) -> None:
    """Raise InvariantError listing every failed invariant of `service`."""
    found = problems(settings, client, api=api, database=database, redis_clients=redis_clients)
    if found:
        raise InvariantError(f"{service} refuses to start: " + "; ".join(found))
