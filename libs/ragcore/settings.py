"""Every setting of every deployable, read once from `RAGCORE_*` environment variables.

`Settings` holds one model per concern (`settings.redis`, `settings.workers`, ...; the API's here,
the others in `ragcore.settings_groups`), each a `BaseSettings` of its own with the `env_prefix`
most of its fields share, so every variable keeps its flat name (`RAGCORE_REDIS_URL` is
`settings.redis.url`); a field outside its model's prefix names its variable in
`validation_alias`. Functions take the model they use; only the entrypoints
call `get_settings()` (its docstring lists them).

Each model's config: no nested delimiter (it would rename the variables `RAGCORE_REDIS__URL`);
populate_by_name, so that code and tests build a model by field name; extra="forbid", so that a
keyword of no field (a flat name from before the grouping, `Settings(redis_url=...)`) is refused,
not ignored.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragcore.settings_groups import (
    BeatSettings,
    DeliverySettings,
    ModelSettings,
    NeighbourSettings,
    QdrantSettings,
    ReconcileSettings,
    RedisSettings,
    RetentionSettings,
    TierSettings,
    WorkerSettings,
)

__all__ = [
    "DEV_API_KEYS",
    "ApiScope",
    "ApiSettings",
    "BeatSettings",
    "DeliverySettings",
    "ModelSettings",
    "NeighbourSettings",
    "QdrantSettings",
    "ReconcileSettings",
    "RedisSettings",
    "RetentionSettings",
    "Settings",
    "TierSettings",
    "WorkerSettings",
    "get_settings",
]

#: What an API key may reach (README's scope table).
ApiScope = Literal["query", "sync", "admin"]
#: Keys that only make sense on a developer's machine; refused outside `environment=dev`.
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


class ApiSettings(BaseSettings):
    """The API process: where it listens, its keys, request bodies, /metrics and the console."""

    model_config = SettingsConfigDict(
        env_prefix="RAGCORE_API_", extra="forbid", populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = 7001
    # API keys: key (or "sha256:<hex>") -> scope ("query", "sync", "admin").
    keys: dict[str, ApiScope] = Field(default_factory=lambda: dict(DEV_API_KEYS))
    # Request bodies: the most a route reads, refused with 413 while streaming in (before the key is
    # checked or anything parses it). Path prefix -> bytes, the longest matching prefix wins, else
    # the default. 64 KiB holds the largest valid query (4,000 characters, 16 filters) with room for
    # JSON escapes; 8 MiB holds a full events batch (10,000 events with 512-character document ids ≈
    # 6 MB).
    max_body_bytes: int = Field(64 * 1024, gt=0, validation_alias="RAGCORE_MAX_BODY_BYTES")
    body_limits: dict[str, int] = Field(
        default_factory=lambda: {"/api/v1/sync/events": 8 * 1024 * 1024},
        validation_alias="RAGCORE_BODY_LIMITS",
    )
    # Bodies larger than max_body_bytes (only routes with a raised limit take them) are read and
    # parsed this many at a time, and only for a caller whose key is known (api.key_gate): 4 event
    # batches of 8 MiB parse in ~1 s on one core, and a burst waits instead of taking every core.
    max_concurrent_large_bodies: int = Field(
        4, ge=1, validation_alias="RAGCORE_MAX_CONCURRENT_LARGE_BODIES"
    )
    # GET /metrics without a key (for scrapers that cannot send X-API-Key); admin key otherwise.
    metrics_public: bool = Field(False, validation_alias="RAGCORE_METRICS_PUBLIC")
    # Task counts and durations in /metrics cover the tasks sent within this window.
    metrics_window_seconds: int = Field(
        3600, gt=0, validation_alias="RAGCORE_METRICS_WINDOW_SECONDS"
    )
    # The operator console at /console (admin key sign-in); false: every /console URL is a 404.
    console: bool = Field(True, validation_alias="RAGCORE_CONSOLE")
    # How long a console session lasts after sign-in (the signed cookie's age and Max-Age).
    console_session_seconds: int = Field(
        8 * 3600, gt=0, le=7 * 24 * 3600, validation_alias="RAGCORE_CONSOLE_SESSION_SECONDS"
    )
    # Signs the console's session cookies. Unset, each API process draws its own at start: sessions
    # then end with the process and hold only on the replica that made them; set it (the same on
    # every replica) when several serve the console.
    console_secret: SecretStr | None = Field(None, validation_alias="RAGCORE_CONSOLE_SECRET")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGCORE_", extra="forbid")

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
    database_url: str = "sqlite:///./.local/ragcore.db"

    # Each reads its own variables when made (no RAGCORE_REDIS etc. variable is read for them).
    redis: RedisSettings = Field(default_factory=RedisSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    neighbours: NeighbourSettings = Field(default_factory=NeighbourSettings)
    deliveries: DeliverySettings = Field(default_factory=DeliverySettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    tiers: TierSettings = Field(default_factory=TierSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    beat: BeatSettings = Field(default_factory=BeatSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.environment != "prod":
            return self
        dev_keys = set(DEV_API_KEYS) & set(self.api.keys)
        if dev_keys:
            raise ValueError(f"development API keys are not allowed in prod: {sorted(dev_keys)}")
        for entry, scope in self.api.keys.items():
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
        secret = self.api.console_secret.get_secret_value() if self.api.console_secret else None
        if secret is not None and len(secret) < MIN_PLAIN_KEY_LENGTH:
            raise ValueError(
                "RAGCORE_CONSOLE_SECRET is a placeholder (prod takes at least "
                f"{MIN_PLAIN_KEY_LENGTH} characters): python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
            )
        return self


def _is_real_key(entry: str) -> bool:
    if entry.startswith("sha256:"):
        return HASHED_KEY.match(entry) is not None
    return len(entry) >= MIN_PLAIN_KEY_LENGTH


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once. Called only by the entrypoints, which hand each function
    the model it uses: the worker entrypoints (`services/*/worker.py` via
    `ragcore.worker.runtime.run`), Beat (`services/beat/main.py`), the API's `main` and
    `create_app` (routes read `app.state.settings` through `api.deps`), `ragcore.db.migrate`'s CLI
    and Alembic's env, and the Celery app factory (`ragcore.tasks.app`), whose tasks read the
    settings their app was made with (`app_settings`). Two more read it where no app reaches: the
    default database of `ragcore.db.session` and the broker of the publish hook in
    `ragcore.broker.held` (a Celery signal, sent without its app)."""
    return Settings()
