"""The settings' groups, one `BaseSettings` per concern, each reading its own `RAGCORE_*` variables
(`ragcore.settings` composes them into `Settings`, with the API's, and says how the names are
kept)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RedisSettings(BaseSettings):
    """Broker, result backend and cache: separate databases or servers, or all `url`."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_REDIS_", extra="forbid", populate_by_name=True
    )

    url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(None, validation_alias="RAGCORE_BROKER_URL")
    result_backend_url: str | None = Field(None, validation_alias="RAGCORE_RESULT_BACKEND_URL")
    cache_url: str | None = Field(None, validation_alias="RAGCORE_CACHE_URL")
    cache_prefix: str = Field("ragcore:cache:", validation_alias="RAGCORE_CACHE_PREFIX")
    cache_ttl_seconds: int = Field(3600, gt=0, validation_alias="RAGCORE_CACHE_TTL_SECONDS")
    result_expires_seconds: int = Field(
        24 * 3600, gt=0, validation_alias="RAGCORE_RESULT_EXPIRES_SECONDS"
    )
    # Must exceed the longest task time limit (full sync: 1 h), or Redis redelivers running tasks.
    visibility_timeout_seconds: int = Field(
        2 * 3600, gt=0, validation_alias="RAGCORE_VISIBILITY_TIMEOUT_SECONDS"
    )
    # Every Redis client of ours (ragcore.redis_clients): how long to wait for a connection and for
    # an answer, and how long a pooled connection may idle before it is pinged first.
    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(10.0, gt=0)
    health_check_seconds: int = Field(30, ge=0)
    # Redis Sentinel (README "Failover"): "host:port,host:port". When set, every Redis above is the
    # master these sentinels name, and its URL (url, broker_url, ...) says only the database and
    # the data nodes' password; its host and port are not used. The sentinels' own password, if
    # they have one, is separate.
    sentinels: str | None = None
    sentinel_master: str = "ragcore"
    sentinel_password: str | None = None

    @property
    def broker(self) -> str:
        return self._through_sentinels(self.broker_url or self.url)

    @property
    def result_backend(self) -> str:
        return self._through_sentinels(self.result_backend_url or self.url)

    @property
    def cache(self) -> str:
        return self._through_sentinels(self.cache_url or self.url)

    @property
    def sentinel_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel; empty without Sentinel."""
        nodes = []
        for node in (self.sentinels or "").split(","):
            host, _, port = node.strip().rpartition(":")
            nodes.append((host, int(port)))
        return nodes if self.sentinels else []

    def _through_sentinels(self, url: str) -> str:
        """`url` as Celery's and kombu's Sentinel transports take it: one `sentinel://` per
        sentinel, each with the URL's credentials and database (ragcore.redis_clients reads it
        too)."""
        if not self.sentinels:
            return url
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        auth = f"{credentials}@" if credentials else ""
        return ";".join(
            f"sentinel://{auth}{host}:{port}{parts.path or '/0'}"
            for host, port in self.sentinel_nodes
        )

    @model_validator(mode="after")
    def _refuse_unusable_sentinels(self) -> RedisSettings:
        if self.sentinels:  # empty: no Sentinel (compose passes an unset variable so)
            urls = (self.url, self.broker_url, self.result_backend_url, self.cache_url)
            _check_sentinels(self.sentinels, [u for u in urls if u])
        return self


class QdrantSettings(BaseSettings):
    """The collection: a server URL (production, or the local stand-in), else a local folder."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_QDRANT_", extra="forbid", populate_by_name=True
    )

    url: str | None = None
    api_key: str | None = None
    path: str = "./.local/qdrant"
    collection: str = "ragcore_chunks"
    vector_size: int = Field(384, gt=0, validation_alias="RAGCORE_VECTOR_SIZE")
    distance: Literal["Cosine", "Dot", "Euclid"] = Field(
        "Cosine", validation_alias="RAGCORE_DISTANCE"
    )


class NeighbourSettings(BaseSettings):
    """Ingest and Users (SPEC §5): where, with which token, and how patiently."""

    model_config = SettingsConfigDict(env_prefix="RAGCORE_", extra="forbid", populate_by_name=True)

    ingest_url: str = "http://127.0.0.1:7101"
    ingest_token: str | None = None
    users_url: str = "http://127.0.0.1:7102"
    users_token: str | None = None
    http_timeout_seconds: float = Field(10.0, gt=0)
    # A neighbour's circuit breaker opens after `fail_max` retryable failures in a row; while open,
    # one probe goes every `probe_seconds`, and when one succeeds every waiting delivery goes out at
    # once.
    breaker_fail_max: int = Field(5, ge=1)
    breaker_probe_seconds: float = Field(15.0, gt=0, le=3600)
    # Documents per page of a full sync from Ingest.
    sync_batch_size: int = Field(256, ge=1, le=500)
    # Hourly usage statistics report an hour once it ended this long ago: longer than a query can
    # take from its start (its message's created_at) to its commit, so no query of the hour is in
    # flight.
    usage_report_lag_seconds: int = Field(600, ge=0)


class DeliverySettings(BaseSettings):
    """A delivery to a neighbour that still fails on a retryable error after its quick retries
    waits in failed_deliveries and is re-driven after base * 2^n seconds (capped), for up to the
    window; then it stays failed for an operator."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_DELIVERY_REDRIVE_", extra="forbid", populate_by_name=True
    )

    base_seconds: float = Field(30.0, gt=0)
    max_backoff_seconds: float = Field(1800.0, gt=0)
    window_seconds: float = Field(24 * 3600.0, gt=0)


class ModelSettings(BaseSettings):
    """Query embedding and answer generation: OpenAI-compatible endpoints when set, local
    otherwise."""

    model_config = SettingsConfigDict(env_prefix="RAGCORE_", extra="forbid", populate_by_name=True)

    embedding_url: str | None = None
    embedding_model: str = "ragcore-hash-384"
    embedding_token: str | None = None
    chat_url: str | None = None
    chat_model: str = "gpt-4o-mini"
    chat_token: str | None = None


class TierSettings(BaseSettings):
    """Per-user limits: tier -> daily query limit, and the 30-day query count that reaches a
    tier."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_TIER_", extra="forbid", populate_by_name=True
    )

    daily_limits: dict[str, int] = Field(
        default_factory=lambda: {"free": 100, "pro": 1000, "enterprise": 10000}
    )
    thresholds: dict[str, int] = Field(
        default_factory=lambda: {"free": 0, "pro": 500, "enterprise": 5000}
    )
    default: str = Field("free", validation_alias="RAGCORE_DEFAULT_TIER")

    @model_validator(mode="after")
    def _refuse_unknown_tiers(self) -> TierSettings:
        if self.default not in self.daily_limits:
            raise ValueError(f"default_tier {self.default!r} has no entry in tier_daily_limits")
        if set(self.thresholds) != set(self.daily_limits):
            raise ValueError("tier_thresholds and tier_daily_limits must name the same tiers")
        return self


class WorkerSettings(BaseSettings):
    """Worker processes: how many, how far ahead they reserve, and how they are seen alive."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_WORKER_", extra="forbid", populate_by_name=True
    )

    # Worker processes per queue (prefork); each queue's image scales on its own.
    concurrency: dict[str, int] = Field(
        default_factory=lambda: {"sync": 2, "notifications": 4, "cleanup": 1, "user": 2}
    )
    # Messages each worker process reserves ahead. The deliveries (short, one per query) reserve a
    # few, so the worker fetches, acknowledges and sends events while its process runs the previous
    # one (measured: a third more deliveries/s); the other queues' tasks run long or rarely. A warm
    # shutdown hands reserved messages back; after a hard kill the worker's next life re-queues
    # them.
    prefetch: dict[str, int] = Field(
        default_factory=lambda: {"sync": 1, "notifications": 4, "cleanup": 1, "user": 1}
    )
    # Workers record a heartbeat (and their last dequeue) in the broker's Redis this often.
    heartbeat_seconds: float = Field(5.0, gt=0, le=60)
    # A worker whose heartbeat is this old is gone: a live worker of its queue re-queues what it
    # held. Well above the heartbeat's own expiry (three beats), so a slow beat never re-queues a
    # running task.
    lost_after_seconds: float = Field(60.0, gt=0)
    # Health: a worker with waiting tasks that dequeued nothing for this long is not consuming.
    dequeue_window_seconds: float = Field(120.0, gt=0)
    # How long the API waits for workers to answer a broadcast (list, workers).
    inspect_timeout_seconds: float = Field(
        1.0, gt=0, le=30, validation_alias="RAGCORE_INSPECT_TIMEOUT_SECONDS"
    )

    @model_validator(mode="after")
    def _refuse_a_hasty_lost_after(self) -> WorkerSettings:
        if self.lost_after_seconds < 3 * self.heartbeat_seconds:
            raise ValueError(
                "worker_lost_after_seconds must be at least three heartbeats "
                "(worker_heartbeat_seconds)"
            )
        return self


class BeatSettings(BaseSettings):
    """What Beat fires and how often its report relay and re-driver run."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_BEAT_", extra="forbid", populate_by_name=True
    )

    # Task name -> when it runs: a 5-field crontab ("0 2 * * *") or an interval in seconds.
    schedule: dict[str, str] = Field(
        default_factory=lambda: {
            "reset_all_daily_limits": "0 0 * * *",
            "cleanup_old_cache": "0 */6 * * *",
            "cleanup_query_cache": "0 2 * * *",
            "process_sync_queue": "*/5 * * * *",
            "send_usage_statistics": "0 * * * *",
            # An extension of SPEC §2 (see contracts.EXTENSIONS): after cleanup_query_cache at 2:00.
            "apply_retention": "30 3 * * *",
        }
    )
    # The report relay publishes the reports of new messages this often, in batches.
    report_relay_seconds: float = Field(
        0.5, gt=0, le=60, validation_alias="RAGCORE_REPORT_RELAY_SECONDS"
    )


class ReconcileSettings(BaseSettings):
    """Reconciliation (Beat): this often, the ledger's unfinished tasks that the broker no longer
    holds are published again (ragcore.tasks.reconcile)."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_RECONCILE_", extra="forbid", populate_by_name=True
    )

    interval_seconds: float = Field(
        60.0, gt=0, le=3600, validation_alias="RAGCORE_RECONCILE_SECONDS"
    )
    # A task is left alone this long after it was sent (or last reconciled): its publish is still
    # in flight, or a worker just took it. Above a heartbeat's lapse, so a worker that was just
    # handed a task has noted it.
    grace_seconds: float = Field(120.0, ge=0)
    # Ledger rows looked at per round (oldest unfinished first, a cursor walking on): the round's
    # cost, whatever the depth of the queues.
    batch_size: int = Field(2000, ge=1, le=100_000)


class RetentionSettings(BaseSettings):
    """apply_retention (daily): how many days each table keeps its rows. Only rows that can never
    change again go; unfinished tasks, unresolved deliveries and events still to apply stay however
    old they are."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_RETENTION_", extra="forbid", populate_by_name=True
    )

    # Finished tasks: status and history of the last month (incident reviews span weeks); at a
    # million queries a day (two rows each) that bounds the ledger near 60M rows instead of growing.
    task_ledger_days: int = Field(30, ge=1)
    # Resolved failed deliveries: few rows (only exhausted retries), kept a quarter for audits.
    failed_deliveries_days: int = Field(90, ge=1)
    # Applied sync events: only the order of the newest event per document matters after they are
    # applied, and sync_documents keeps it; a week covers debugging a recent sync.
    sync_events_days: int = Field(7, ge=1)
    # Query-cache rows: the default days of SPEC's cleanup_query_cache, so both agree.
    query_cache_days: int = Field(30, ge=1)
    # Rows per delete transaction: short row locks, a stopped run keeps what it did.
    batch_size: int = Field(1000, ge=1, le=100_000)


def _check_sentinels(sentinels: str, urls: list[str]) -> None:
    for node in sentinels.split(","):
        host, _, port = node.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"RAGCORE_REDIS_SENTINELS entry {node.strip()!r} is not host:port "
                '(expected e.g. "sentinel-0:26379,sentinel-1:26379,sentinel-2:26379")'
            )
    if any(urlsplit(url).scheme != "redis" for url in urls):
        # The URLs only lend their database and password to the sentinel:// ones (plain TCP).
        raise ValueError(
            "with RAGCORE_REDIS_SENTINELS, the Redis URLs (RAGCORE_REDIS_URL, RAGCORE_BROKER_URL, "
            "RAGCORE_RESULT_BACKEND_URL, RAGCORE_CACHE_URL) must be redis:// URLs"
        )
