"""Tasks of the `notifications` queue: report to the Users system (SPEC §2, §5).

Every call goes through one httpx client per worker process with explicit timeouts, carries an
idempotency key (so a retry is never counted twice), and is retried by `define_task` on network
errors and 5xx only. A delivery that will not be retried again is recorded for an operator.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

import httpx
from celery import Celery, Task
from ragcore.tasks import contracts
from ragcore.tasks.app import PermanentTaskError, define_task
from ragcore.tasks.contracts import (
    QueryResultArgs,
    SystemNotificationArgs,
    UsageStatisticsArgs,
)
from ragcore.db import session_scope, utcnow
from ragcore.clients.transport import shared_http_client
from ragcore.tasks.locks import lock_client, periodic_lock
from ragcore.settings import get_settings
from ragcore.clients.users import UsersClient

from services.notifications import usage
from services.notifications.failures import deliver



def http_client() -> httpx.Client:
    """The process's client (one per prefork child); benchmarks swap this for their baseline."""
    return shared_http_client(get_settings())


def users() -> UsersClient:
    settings = get_settings()
    return UsersClient(http_client(), settings.users_url, settings.users_token)


def send_query_result_to_users(self: Task, args: QueryResultArgs) -> dict[str, Any]:
    """Report one answered query; the message id is the idempotency key."""
    payload = args.model_dump(mode="json")
    code = deliver(self, contracts.SEND_QUERY_RESULT, payload, lambda: users().send_query_result(payload))
    return {"message_id": args.message_id, "status_code": code}


def send_usage_statistics(self: Task, args: UsageStatisticsArgs) -> dict[str, Any]:
    """Report usage of one complete hour (by default the last) per user; the period is the key."""
    now = utcnow()
    start = usage.hour_start(args.period_start.astimezone(timezone.utc)) if args.period_start else usage.last_complete_hour(now)
    end = start + usage.HOUR
    if end > now:
        raise PermanentTaskError(f"the hour starting {start.isoformat()} is not over yet")
    pinned = {"period_start": start.isoformat()}
    # A retry re-sends the request's kwargs: pin the period, so a retry after the hour turns still
    # reports this hour, under this key.
    self.request.kwargs = pinned
    task = contracts.SEND_USAGE_STATISTICS
    with periodic_lock(lock_client(), f"{task.name}:{start.isoformat()}", ttl=task.time_limit) as acquired:
        if not acquired:
            return dict(contracts.SKIPPED)
        with session_scope() as session:
            report = usage.usage_report(session, start, end)
        code = deliver(self, task, pinned, lambda: users().send_usage_statistics(report))
    return {"period_start": report["period_start"], "users": len(report["users"]), "status_code": code}


def send_system_notification(self: Task, args: SystemNotificationArgs) -> dict[str, Any]:
    """Send a system notification; the sender's key, or this task's id (stable across retries)."""
    key = args.idempotency_key or self.request.id
    body = args.model_dump(mode="json", exclude={"idempotency_key"})
    pinned = {**body, "idempotency_key": key}  # a re-drive runs under a new task id, same key
    code = deliver(self, contracts.SEND_SYSTEM_NOTIFICATION, pinned, lambda: users().send_notification(body, key))
    return {"idempotency_key": key, "recipients": len(args.user_ids), "status_code": code}


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
    define_task(app, contracts.SEND_QUERY_RESULT)(send_query_result_to_users)
    define_task(app, contracts.SEND_USAGE_STATISTICS)(send_usage_statistics)
    define_task(app, contracts.SEND_SYSTEM_NOTIFICATION)(send_system_notification)
