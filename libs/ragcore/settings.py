"""Every setting of every deployable, read once from `RAGCORE_*` environment variables."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Keys that only make sense on a developer's machine; refused outside `environment=dev`.
#: What an API key may reach (README's scope table).
ApiScope = Literal["query", "sync", "admin"]
DEV_API_KEYS: dict[str, ApiScope] = {
    "dev-admin-key": "admin",
    "dev-query-key": "query",
    "dev-sync-key": "sync",
}
#: A hashed key entry: "sha256:" and the 64 hex digits of the key's SHA-256.
HASHED_KEY = re.compile(r"^sha256:[0-9a-f]{64}$")
#: Shorter plain keys are placeholders or guessable; prod refuses them.
MIN_PLAIN_KEY_LENGTH = 32
#: How to make a key and its entry (also in README "Settings").
MAKE_KEY = (
    "python3 -c 'import hashlib, secrets; k = secrets.token_urlsafe(32); "
    'print("key:", k); print("entry: sha256:" + hashlib.sha256(k.encode()).hexdigest())\''
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_", env_nested_delimiter="__", extra="ignore"
    )

    environment: Literal["dev", "test", "prod"] = "dev"
    log_level: str = "INFO"
    # Celery's INFO line per task received and per task succeeded. Off by default: the ledger,
    # Flower's task events and the error lines tell the same, and at hundreds of tasks/s the two
    # lines cost a short task ~7 % of its throughput.
    log_task_lifecycle: bool = False
    # Traces are configured by the standard OTEL_* variables (ragcore.tracing); with
    # OTEL_TRACES_EXPORTER=console, spans go to this file (one JSON object per line) if set, else
    # to stderr among the log lines.
    trace_file: str | None = None
    timezone: str = "UTC"

    api_host: str = "127.0.0.1"
    api_port: int = 7001

    # Redis: broker, result backend and cache may be separate databases or servers.
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None
    result_backend_url: str | None = None
    cache_url: str | None = None
    cache_prefix: str = "ragcore:cache:"
    cache_ttl_seconds: int = Field(3600, gt=0)
    result_expires_seconds: int = Field(24 * 3600, gt=0)
    # Must exceed the longest task time limit (full sync: 1 h), or Redis redelivers running tasks.
    visibility_timeout_seconds: int = Field(2 * 3600, gt=0)
    # Every Redis client of ours (ragcore.redis_clients): how long to wait for a connection and for
    # an answer, and how long a pooled connection may idle before it is pinged first.
    redis_connect_timeout_seconds: float = Field(5.0, gt=0)
    redis_read_timeout_seconds: float = Field(10.0, gt=0)
    redis_health_check_seconds: int = Field(30, ge=0)
    # Redis Sentinel (README "Failover"): "host:port,host:port". When set, every Redis above is the
    # master these sentinels name, and its URL (redis_url, broker_url, ...) says only the database
    # and the data nodes' password; its host and port are not used. The sentinels' own password,
    # if they have one, is separate.
    redis_sentinels: str | None = None
    redis_sentinel_master: str = "ragcore"
    redis_sentinel_password: str | None = None

    database_url: str = "sqlite:///./.local/ragcore.db"

    # Qdrant: a server URL (production, or the local stand-in), else an in-process local folder.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_path: str = "./.local/qdrant"
    qdrant_collection: str = "ragcore_chunks"
    vector_size: int = Field(384, gt=0)
    distance: Literal["Cosine", "Dot", "Euclid"] = "Cosine"

    # Neighbours (SPEC §5).
    ingest_url: str = "http://127.0.0.1:7101"
    ingest_token: str | None = None
    users_url: str = "http://127.0.0.1:7102"
    users_token: str | None = None
    http_timeout_seconds: float = Field(10.0, gt=0)
    # A delivery to a neighbour that still fails on a retryable error after its quick retries waits
    # in failed_deliveries and is re-driven after base * 2^n seconds (capped), for up to the window;
    # then it stays failed for an operator. Its neighbour's circuit breaker opens after `fail_max`
    # retryable failures in a row; while open, one probe goes every `probe_seconds`, and when one
    # succeeds every waiting delivery goes out at once.
    delivery_redrive_base_seconds: float = Field(30.0, gt=0)
    delivery_redrive_max_backoff_seconds: float = Field(1800.0, gt=0)
    delivery_redrive_window_seconds: float = Field(24 * 3600.0, gt=0)
    breaker_fail_max: int = Field(5, ge=1)
    breaker_probe_seconds: float = Field(15.0, gt=0, le=3600)

    # Query embedding and answer generation: OpenAI-compatible endpoints when set, local otherwise.
    embedding_url: str | None = None
    embedding_model: str = "ragcore-hash-384"
    embedding_token: str | None = None
    chat_url: str | None = None
    chat_model: str = "gpt-4o-mini"
    chat_token: str | None = None

    # API keys: key (or "sha256:<hex>") -> scope ("query", "sync", "admin").
    api_keys: dict[str, ApiScope] = Field(default_factory=lambda: dict(DEV_API_KEYS))

    # Per-user limits: tier -> daily query limit, and the 30-day query count that reaches a tier.
    tier_daily_limits: dict[str, int] = Field(
        default_factory=lambda: {"free": 100, "pro": 1000, "enterprise": 10000}
    )
    tier_thresholds: dict[str, int] = Field(
        default_factory=lambda: {"free": 0, "pro": 500, "enterprise": 5000}
    )
    default_tier: str = "free"

    # Worker processes per queue (prefork); each queue's image scales on its own.
    worker_concurrency: dict[str, int] = Field(
        default_factory=lambda: {"sync": 2, "notifications": 4, "cleanup": 1, "user": 2}
    )
    # Messages each worker process reserves ahead. The deliveries (short, one per query) reserve a
    # few, so the worker fetches, acknowledges and sends events while its process runs the previous
    # one (measured: a third more deliveries/s); the other queues' tasks run long or rarely. A warm
    # shutdown hands reserved messages back; after a hard kill the worker's next life re-queues
    # them.
    worker_prefetch: dict[str, int] = Field(
        default_factory=lambda: {"sync": 1, "notifications": 4, "cleanup": 1, "user": 1}
    )

    # Hourly usage statistics report an hour once it ended this long ago: longer than a query can
    # take from its start (its message's created_at) to its commit, so no query of the hour is in
    # flight.
    usage_report_lag_seconds: int = Field(600, ge=0)

    # Beat: task name -> when it runs: a 5-field crontab ("0 2 * * *") or an interval in seconds.
    beat_schedule: dict[str, str] = Field(
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

    # Retention (apply_retention, daily): how many days each table keeps its rows. Only rows that
    # can never change again go; unfinished tasks, unresolved deliveries and events still to apply
    # stay however old they are. Finished tasks: status and history of the last month (incident
    # reviews span weeks); at a million queries a day (two rows each) that bounds the ledger near
    # 60M rows instead of growing.
    retention_task_ledger_days: int = Field(30, ge=1)
    # Resolved failed deliveries: few rows (only exhausted retries), kept a quarter for audits.
    retention_failed_deliveries_days: int = Field(90, ge=1)
    # Applied sync events: only the order of the newest event per document matters after they are
    # applied, and sync_documents keeps it; a week covers debugging a recent sync.
    retention_sync_events_days: int = Field(7, ge=1)
    # Query-cache rows: the default days of SPEC's cleanup_query_cache, so both agree.
    retention_query_cache_days: int = Field(30, ge=1)
    # Rows per delete transaction: short row locks, a stopped run keeps what it did.
    retention_batch_size: int = Field(1000, ge=1, le=100_000)

    sync_batch_size: int = Field(256, ge=1, le=500)
    # The report relay (in Beat) publishes the reports of new messages this often, in batches.
    report_relay_seconds: float = Field(0.5, gt=0, le=60)

    # Request bodies: the most a route reads, refused with 413 while streaming in (before the key is
    # checked or anything parses it). Path prefix -> bytes, the longest matching prefix wins, else
    # the default. 64 KiB holds the largest valid query (4,000 characters, 16 filters) with room for
    # JSON escapes; 8 MiB holds a full events batch (10,000 events with 512-character document ids ≈
    # 6 MB).
    max_body_bytes: int = Field(64 * 1024, gt=0)
    body_limits: dict[str, int] = Field(
        default_factory=lambda: {"/api/v1/sync/events": 8 * 1024 * 1024}
    )
    # Bodies larger than max_body_bytes (only routes with a raised limit take them) are read and
    # parsed this many at a time, and only for a caller whose key is known (api.key_gate): 4 event
    # batches of 8 MiB parse in ~1 s on one core, and a burst waits instead of taking every core.
    max_concurrent_large_bodies: int = Field(4, ge=1)

    # Task management: how long the API waits for workers to answer a broadcast (list, workers).
    inspect_timeout_seconds: float = Field(1.0, gt=0, le=30)
    # GET /metrics without a key (for scrapers that cannot send X-API-Key); admin key otherwise.
    metrics_public: bool = False
    # Task counts and durations in /metrics cover the tasks sent within this window.
    metrics_window_seconds: int = Field(3600, gt=0)
    # Beat recomputes those counts and durations (and the console's queues picture) this often;
    # the API shows them up to 3 intervals old, and aggregates the window itself when they are
    # older or missing (ragcore.tasks.ledger.snapshot).
    metrics_snapshot_seconds: float = Field(10.0, gt=0, le=300)
    # The operator console at /console (admin key sign-in); false: every /console URL is a 404.
    console: bool = True
    # How long a console session lasts after sign-in (the signed cookie's age and Max-Age).
    console_session_seconds: int = Field(8 * 3600, gt=0, le=7 * 24 * 3600)
    # Signs the console's session cookies. Unset, each API process draws its own at start: sessions
    # then end with the process and hold only on the replica that made them; set it (the same on
    # every replica) when several serve the console.
    console_secret: SecretStr | None = None
    # Workers record a heartbeat (and their last dequeue) in the broker's Redis this often.
    worker_heartbeat_seconds: float = Field(5.0, gt=0, le=60)
    # A worker whose heartbeat is this old is gone: a live worker of its queue re-queues what it
    # held. Well above the heartbeat's own expiry (three beats), so a slow beat never re-queues a
    # running task.
    worker_lost_after_seconds: float = Field(60.0, gt=0)
    # Health: a worker with waiting tasks that dequeued nothing for this long is not consuming.
    worker_dequeue_window_seconds: float = Field(120.0, gt=0)
    # Reconciliation (Beat): this often, the ledger's unfinished tasks that the broker no longer
    # holds are published again (ragcore.tasks.reconcile).
    reconcile_seconds: float = Field(60.0, gt=0, le=3600)
    # A task is left alone this long after it was sent (or last reconciled): its publish is still
    # in flight, or a worker just took it. Above a heartbeat's lapse, so a worker that was just
    # handed a task has noted it.
    reconcile_grace_seconds: float = Field(120.0, ge=0)
    # Ledger rows looked at per round (oldest unfinished first, a cursor walking on): the round's
    # cost, whatever the depth of the queues.
    reconcile_batch_size: int = Field(2000, ge=1, le=100_000)

    @property
    def broker(self) -> str:
        return self._through_sentinels(self.broker_url or self.redis_url)

    @property
    def result_backend(self) -> str:
        return self._through_sentinels(self.result_backend_url or self.redis_url)

    @property
    def cache(self) -> str:
        return self._through_sentinels(self.cache_url or self.redis_url)

    @property
    def sentinel_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel; empty without Sentinel."""
        nodes = []
        for node in (self.redis_sentinels or "").split(","):
            host, _, port = node.strip().rpartition(":")
            nodes.append((host, int(port)))
        return nodes if self.redis_sentinels else []

    def _through_sentinels(self, url: str) -> str:
        """`url` as Celery's and kombu's Sentinel transports take it: one `sentinel://` per
        sentinel, each with the URL's credentials and database (ragcore.redis_clients reads it
        too)."""
        if not self.redis_sentinels:
            return url
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        auth = f"{credentials}@" if credentials else ""
        return ";".join(
            f"sentinel://{auth}{host}:{port}{parts.path or '/0'}"
            for host, port in self.sentinel_nodes
        )

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.environment == "prod":
            dev_keys = set(DEV_API_KEYS) & set(self.api_keys)
            if dev_keys:
                raise ValueError(
                    f"development API keys are not allowed in prod: {sorted(dev_keys)}"
                )
            for entry, scope in self.api_keys.items():
                if not _is_real_key(entry):
                    # A hashed entry is no secret; of a plain key only its length is told.
                    which = (
                        repr(entry)
                        if entry.startswith("sha256:")
                        else f"(a plain key of {len(entry)} characters)"
                    )
                    raise ValueError(
                        f"RAGCORE_API_KEYS entry {which} for scope {scope!r} is a placeholder "
                        '(prod takes "sha256:<64 lowercase hex digits>" or a plain key of at '
                        f"least {MIN_PLAIN_KEY_LENGTH} characters); "
                        f"make a key and its entry with: {MAKE_KEY}"
                    )
            secret = self.console_secret.get_secret_value() if self.console_secret else None
            if secret is not None and len(secret) < MIN_PLAIN_KEY_LENGTH:
                raise ValueError(
                    "RAGCORE_CONSOLE_SECRET is a placeholder (prod takes at least "
                    f"{MIN_PLAIN_KEY_LENGTH} characters): python3 -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'"
                )
        if self.default_tier not in self.tier_daily_limits:
            raise ValueError(
                f"default_tier {self.default_tier!r} has no entry in tier_daily_limits"
            )
        if self.worker_lost_after_seconds < 3 * self.worker_heartbeat_seconds:
            raise ValueError(
                "worker_lost_after_seconds must be at least three heartbeats "
                "(worker_heartbeat_seconds)"
            )
        if self.redis_sentinels:  # empty: no Sentinel (compose passes an unset variable so)
            urls = (self.redis_url, self.broker_url, self.result_backend_url, self.cache_url)
            _check_sentinels(self.redis_sentinels, [u for u in urls if u])
        if set(self.tier_thresholds) != set(self.tier_daily_limits):
            raise ValueError("tier_thresholds and tier_daily_limits must name the same tiers")
        return self


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


def _is_real_key(entry: str) -> bool:
    if entry.startswith("sha256:"):
        return HASHED_KEY.match(entry) is not None
    return len(entry) >= MIN_PLAIN_KEY_LENGTH


@lru_cache
def get_settings() -> Settings:
    return Settings()
