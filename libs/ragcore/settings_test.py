"""Prod refuses API key entries that are placeholders, and says which one and how to make a real
one; every `RAGCORE_*` variable keeps its name since the settings were grouped."""

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from ragcore.settings import ApiSettings, RedisSettings, Settings

REAL_HASH = "sha256:" + hashlib.sha256(b"a key made by the recipe").hexdigest()


@pytest.mark.parametrize(
    "entry", ["sha256:CHANGE-ME", "sha256:" + "A" * 64, "sha256:" + "0" * 63, "CHANGE-ME-admin-key"]
)
def test_prod_refuses_a_placeholder_key_naming_it_and_the_recipe(entry: str) -> None:
    # Named by the entry when hashed (no secret), by its length when plain (a plain key is one).
    with pytest.raises(ValidationError) as refused:
        Settings(environment="prod", api=ApiSettings(keys={REAL_HASH: "query", entry: "admin"}))
    message = str(refused.value)
    which = (
        repr(entry) if entry.startswith("sha256:") else f"a plain key of {len(entry)} characters"
    )
    assert which in message and "scope 'admin'" in message
    assert entry.startswith("sha256:") or entry not in message
    assert "secrets.token_urlsafe" in message and "hashlib.sha256" in message


def test_prod_accepts_hashed_and_long_plain_keys() -> None:
    keys = ApiSettings(keys={REAL_HASH: "admin", "p" * 32: "query"})
    assert set(Settings(environment="prod", api=keys).api.keys) == {REAL_HASH, "p" * 32}


def test_dev_keeps_its_short_development_keys() -> None:
    assert "dev-admin-key" in Settings(environment="dev").api.keys


def test_prod_refuses_a_placeholder_console_secret_without_showing_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(
            environment="prod",
            api=ApiSettings(keys={REAL_HASH: "admin"}, console_secret="CHANGE-ME"),
        )
    assert "RAGCORE_CONSOLE_SECRET is a placeholder" in str(refused.value)
    long = "s" * 32
    assert Settings(
        environment="prod", api=ApiSettings(keys={REAL_HASH: "admin"}, console_secret=long)
    )


def test_with_sentinels_each_redis_url_names_every_sentinel_keeping_db_and_password() -> None:
    settings = RedisSettings(
        url="redis://:s%40cret@ignored:6379/0",
        cache_url="redis://ignored/3",
        sentinels="s1:26379, s2:26380",
    )
    assert settings.broker == "sentinel://:s%40cret@s1:26379/0;sentinel://:s%40cret@s2:26380/0"
    assert settings.cache == "sentinel://s1:26379/3;sentinel://s2:26380/3"
    assert settings.sentinel_nodes == [("s1", 26379), ("s2", 26380)]
    assert RedisSettings(sentinels="").broker == RedisSettings().broker == RedisSettings().url


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sentinels": "s1:26379,s2"}, "'s2' is not host:port"),
        ({"sentinels": "s1:99999"}, "'s1:99999' is not host:port"),
        ({"sentinels": "s1:1", "broker_url": "rediss://b:6380/0"}, "must be redis:// URLs"),
    ],
)
def test_a_sentinel_setting_that_cannot_work_is_refused_saying_why(
    changes: dict[str, str], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        RedisSettings(**changes)  # type: ignore[arg-type]  # str values for the fields under test


def test_a_flat_keyword_from_before_the_grouping_is_refused_not_ignored() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="redis://elsewhere/0")  # type: ignore[call-arg]


#: Every variable as it was named before the settings were grouped -> where it is read now. A new
#: setting is added here too (the first test fails until it is).
NAMES = {
    "RAGCORE_ENVIRONMENT": "environment",
    "RAGCORE_LOG_LEVEL": "log_level",
    "RAGCORE_LOG_TASK_LIFECYCLE": "log_task_lifecycle",
    "RAGCORE_TRACE_FILE": "trace_file",
    "RAGCORE_TIMEZONE": "timezone",
    "RAGCORE_DATABASE_URL": "database_url",
    "RAGCORE_REDIS_URL": "redis.url",
    "RAGCORE_BROKER_URL": "redis.broker_url",
    "RAGCORE_RESULT_BACKEND_URL": "redis.result_backend_url",
    "RAGCORE_CACHE_URL": "redis.cache_url",
    "RAGCORE_CACHE_PREFIX": "redis.cache_prefix",
    "RAGCORE_CACHE_TTL_SECONDS": "redis.cache_ttl_seconds",
    "RAGCORE_RESULT_EXPIRES_SECONDS": "redis.result_expires_seconds",
    "RAGCORE_VISIBILITY_TIMEOUT_SECONDS": "redis.visibility_timeout_seconds",
    "RAGCORE_REDIS_CONNECT_TIMEOUT_SECONDS": "redis.connect_timeout_seconds",
    "RAGCORE_REDIS_READ_TIMEOUT_SECONDS": "redis.read_timeout_seconds",
    "RAGCORE_REDIS_HEALTH_CHECK_SECONDS": "redis.health_check_seconds",
    "RAGCORE_REDIS_SENTINELS": "redis.sentinels",
    "RAGCORE_REDIS_SENTINEL_MASTER": "redis.sentinel_master",
    "RAGCORE_REDIS_SENTINEL_PASSWORD": "redis.sentinel_password",
    "RAGCORE_QDRANT_URL": "qdrant.url",
    "RAGCORE_QDRANT_API_KEY": "qdrant.api_key",
    "RAGCORE_QDRANT_PATH": "qdrant.path",
    "RAGCORE_QDRANT_COLLECTION": "qdrant.collection",
    "RAGCORE_VECTOR_SIZE": "qdrant.vector_size",
    "RAGCORE_DISTANCE": "qdrant.distance",
    "RAGCORE_INGEST_URL": "neighbours.ingest_url",
    "RAGCORE_INGEST_TOKEN": "neighbours.ingest_token",
    "RAGCORE_USERS_URL": "neighbours.users_url",
    "RAGCORE_USERS_TOKEN": "neighbours.users_token",
    "RAGCORE_HTTP_TIMEOUT_SECONDS": "neighbours.http_timeout_seconds",
    "RAGCORE_BREAKER_FAIL_MAX": "neighbours.breaker_fail_max",
    "RAGCORE_BREAKER_PROBE_SECONDS": "neighbours.breaker_probe_seconds",
    "RAGCORE_SYNC_BATCH_SIZE": "neighbours.sync_batch_size",
    "RAGCORE_USAGE_REPORT_LAG_SECONDS": "neighbours.usage_report_lag_seconds",
    "RAGCORE_DELIVERY_REDRIVE_BASE_SECONDS": "deliveries.base_seconds",
    "RAGCORE_DELIVERY_REDRIVE_MAX_BACKOFF_SECONDS": "deliveries.max_backoff_seconds",
    "RAGCORE_DELIVERY_REDRIVE_WINDOW_SECONDS": "deliveries.window_seconds",
    "RAGCORE_EMBEDDING_URL": "models.embedding_url",
    "RAGCORE_EMBEDDING_MODEL": "models.embedding_model",
    "RAGCORE_EMBEDDING_TOKEN": "models.embedding_token",
    "RAGCORE_CHAT_URL": "models.chat_url",
    "RAGCORE_CHAT_MODEL": "models.chat_model",
    "RAGCORE_CHAT_TOKEN": "models.chat_token",
    "RAGCORE_TIER_DAILY_LIMITS": "tiers.daily_limits",
    "RAGCORE_TIER_THRESHOLDS": "tiers.thresholds",
    "RAGCORE_DEFAULT_TIER": "tiers.default",
    "RAGCORE_API_HOST": "api.host",
    "RAGCORE_API_PORT": "api.port",
    "RAGCORE_API_KEYS": "api.keys",
    "RAGCORE_MAX_BODY_BYTES": "api.max_body_bytes",
    "RAGCORE_BODY_LIMITS": "api.body_limits",
    "RAGCORE_MAX_CONCURRENT_LARGE_BODIES": "api.max_concurrent_large_bodies",
    "RAGCORE_METRICS_PUBLIC": "api.metrics_public",
    "RAGCORE_METRICS_WINDOW_SECONDS": "api.metrics_window_seconds",
    "RAGCORE_CONSOLE": "api.console",
    "RAGCORE_CONSOLE_SESSION_SECONDS": "api.console_session_seconds",
    "RAGCORE_CONSOLE_SECRET": "api.console_secret",
    "RAGCORE_WORKER_CONCURRENCY": "workers.concurrency",
    "RAGCORE_WORKER_PREFETCH": "workers.prefetch",
    "RAGCORE_WORKER_HEARTBEAT_SECONDS": "workers.heartbeat_seconds",
    "RAGCORE_WORKER_LOST_AFTER_SECONDS": "workers.lost_after_seconds",
    "RAGCORE_WORKER_DEQUEUE_WINDOW_SECONDS": "workers.dequeue_window_seconds",
    "RAGCORE_INSPECT_TIMEOUT_SECONDS": "workers.inspect_timeout_seconds",
    "RAGCORE_BEAT_SCHEDULE": "beat.schedule",
    "RAGCORE_REPORT_RELAY_SECONDS": "beat.report_relay_seconds",
    "RAGCORE_RECONCILE_SECONDS": "reconcile.interval_seconds",
    "RAGCORE_RECONCILE_GRACE_SECONDS": "reconcile.grace_seconds",
    "RAGCORE_RECONCILE_BATCH_SIZE": "reconcile.batch_size",
    "RAGCORE_RETENTION_TASK_LEDGER_DAYS": "retention.task_ledger_days",
    "RAGCORE_RETENTION_FAILED_DELIVERIES_DAYS": "retention.failed_deliveries_days",
    "RAGCORE_RETENTION_SYNC_EVENTS_DAYS": "retention.sync_events_days",
    "RAGCORE_RETENTION_QUERY_CACHE_DAYS": "retention.query_cache_days",
    "RAGCORE_RETENTION_BATCH_SIZE": "retention.batch_size",
}


def _env_names(model: type[BaseSettings], path: str = "") -> dict[str, str]:
    """Each variable `model` reads -> its field's dotted path, as pydantic-settings names them."""
    found: dict[str, str] = {}
    prefix = model.model_config.get("env_prefix", "")
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            found |= _env_names(kind, f"{path}{name}.")
        else:
            alias = field.validation_alias
            found[str(alias) if alias else f"{prefix}{name}".upper()] = f"{path}{name}"
    return found


def test_every_variable_keeps_its_name() -> None:
    assert _env_names(Settings) == NAMES


#: Values the generic rule below would not make valid.
CHOSEN: dict[str, tuple[str, Any]] = {
    "RAGCORE_ENVIRONMENT": ("test", "test"),
    "RAGCORE_DISTANCE": ("Dot", "Dot"),
    "RAGCORE_DEFAULT_TIER": ("pro", "pro"),
    "RAGCORE_REDIS_SENTINELS": ("s1:1,s2:2", "s1:1,s2:2"),
    "RAGCORE_API_KEYS": (json.dumps({REAL_HASH: "admin"}), {REAL_HASH: "admin"}),
    "RAGCORE_TIER_DAILY_LIMITS": ('{"free": 1, "pro": 2}', {"free": 1, "pro": 2}),
    "RAGCORE_TIER_THRESHOLDS": ('{"free": 0, "pro": 2}', {"free": 0, "pro": 2}),
}
REDIS_URLS = {"RAGCORE_REDIS_URL", "RAGCORE_BROKER_URL", "RAGCORE_RESULT_BACKEND_URL"}


def _other_value(default: Any, env: str) -> tuple[str, Any]:
    """A valid value unlike `default` for the variable `env`: (its text, what it reads as)."""
    if env in CHOSEN:
        return CHOSEN[env]
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int | float):
        return str(default + 1), default + 1
    if isinstance(default, dict):  # one entry more, of the type of the others
        more = default | {"x": next(iter(default.values()))}
        return json.dumps(more), more
    value = "redis://other/1" if env in REDIS_URLS | {"RAGCORE_CACHE_URL"} else f"other-{env}"
    return value, value


def _read(settings: Settings, path: str) -> Any:
    group, _, field = path.rpartition(".")
    return getattr(getattr(settings, group) if group else settings, field)


def test_each_variable_is_read_into_its_group(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults, expected = Settings(), {}
    for env, path in NAMES.items():
        text, expected[path] = _other_value(_read(defaults, path), env)
        monkeypatch.setenv(env, text)
    read = Settings()
    for path, value in expected.items():
        got = _read(read, path)
        if path == "api.console_secret":
            got = got.get_secret_value()
        assert got == value, path
