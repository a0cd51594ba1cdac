"""Tasks of the `cleanup` queue: keep Redis and the database from growing without bound."""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery, Task

from ragcore.db import session_scope, utcnow
from ragcore.query.cache import HotCache, data_version
from ragcore.redis_clients import redis_client
from ragcore.settings import RedisSettings
from ragcore.tasks import contracts
from ragcore.tasks.app import app_settings, define_task
from ragcore.tasks.arguments import CleanupConversationsArgs, CleanupQueryCacheArgs, NoArgs
from services.cleanup import redis_purge, retention


def _redis(redis_settings: RedisSettings, url: str) -> redis.Redis:
    # A SCAN batch over a large keyspace may take a while: a longer read budget than the default.
    return redis_client(redis_settings, url, read_timeout=30)


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""

    @define_task(app, contracts.CLEANUP_OLD_CACHE)
    def cleanup_old_cache(self: Task, args: NoArgs) -> dict[str, Any]:
        """Remove hot query-cache entries of older data versions from Redis: they can never be
        served."""
        settings = app_settings(self.app).redis
        with session_scope() as session:
            version = data_version(session)
        client = _redis(settings, settings.cache)
        cache = HotCache(client, settings.cache_prefix, settings.cache_ttl_seconds)
        return redis_purge.purge_stale_cache(cache, version)

    @define_task(app, contracts.CLEANUP_QUERY_CACHE)
    def cleanup_query_cache(self: Task, args: CleanupQueryCacheArgs) -> dict[str, Any]:
        """Delete `query_cache` rows older than `days`, a bounded batch per transaction."""
        return retention.delete_old_query_cache(session_scope, utcnow(), args.days)

    @define_task(app, contracts.CLEANUP_OLD_CONVERSATIONS)
    def cleanup_old_conversations(self: Task, args: CleanupConversationsArgs) -> dict[str, Any]:
        """Archive conversations idle for `days` with their messages; nothing is deleted."""
        return retention.archive_old_conversations(session_scope, utcnow(), args.days)

    @define_task(app, contracts.APPLY_RETENTION)
    def apply_retention(self: Task, args: NoArgs) -> dict[str, Any]:
        """Delete what each table keeps no longer (settings `retention_*`), in bounded batches."""
        return retention.apply_retention(session_scope, utcnow(), app_settings(self.app).retention)

    @define_task(app, contracts.CLEANUP_FAILED_TASKS)
    def cleanup_failed_tasks(self: Task, args: NoArgs) -> dict[str, Any]:
        """Remove results of failed tasks from the result backend; the task ledger keeps the
        failures."""
        settings = app_settings(self.app).redis
        return redis_purge.purge_failed_results(_redis(settings, settings.result_backend))
