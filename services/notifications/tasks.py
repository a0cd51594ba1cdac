"""Tasks of the `notifications` queue: report to the Users system (SPEC §2, §5).

Every call goes through one httpx client per worker process with explicit timeouts, carries an
idempotency key (so a retry is never counted twice), and is retried by `define_task` on network
errors and 5xx only. A delivery that will not be retried again is recorded for an operator.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from celery import Celery, Task

from ragcore import notification_keys
from ragcore.clients.transport import is_retryable, shared_http_client
from ragcore.clients.users import UsersClient, content_digest
from ragcore.db import session_scope, utcnow
from ragcore.deliveries import deliver
from ragcore.settings import NeighbourSettings
from ragcore.tasks import contracts
from ragcore.tasks.app import PermanentTaskError, app_settings, define_task
from ragcore.tasks.arguments import QueryResultArgs, SystemNotificationArgs, UsageStatisticsArgs
from ragcore.tasks.locks import lock_client, periodic_lock
from services.notifications import usage


def http_client(neighbours: NeighbourSettings) -> httpx.Client:
    """The process's client (one per prefork child); benchmarks swap this for their baseline."""
    return shared_http_client(neighbours)


def users(task: Task) -> UsersClient:
    """Users, as the settings of `task`'s app say."""
    neighbours = app_settings(task.app).neighbours
    return UsersClient(http_client(neighbours), neighbours.users_url, neighbours.users_token)


def send_query_result_to_users(self: Task, args: QueryResultArgs) -> dict[str, Any]:
    """Report one answered query; the message id is the idempotency key."""
    payload = args.model_dump(mode="json")
    code = deliver(
        self, contracts.SEND_QUERY_RESULT, payload, lambda: users(self).send_query_result(payload)
    )
    return {"message_id": args.message_id, "status_code": code}


def send_usage_statistics(self: Task, args: UsageStatisticsArgs) -> dict[str, Any]:
    """Report usage per user of `period_start`, or of every hour due and not reported yet; the
    period is the key.

    An hour is due once it ended `usage_report_lag_seconds` ago, so no query of it is still in
    flight. Hours are recorded once Users has them, so hours missed during an outage (of this
    worker, Beat or Users) are sent by the next run, oldest first, each once; a retry recomputes
    them from the record.
    """
    latest = usage.latest_reportable_hour(
        utcnow(), timedelta(seconds=app_settings(self.app).neighbours.usage_report_lag_seconds)
    )
    if args.period_start is None:
        with session_scope() as session:
            periods = usage.due_periods(session, latest)
    else:
        start = usage.hour_start(args.period_start.astimezone(UTC))
        if start > latest:
            raise PermanentTaskError(
                f"the hour starting {start.isoformat()} is not reportable yet: "
                "queries of it may still run"
            )
        periods = [start]
    reported: list[dict[str, Any]] = []
    for start in periods:
        sent = _report_hour(self, start, again=args.period_start is not None)
        if sent is None:  # another run holds this hour; it goes on with the later ones itself
            return {**contracts.SKIPPED, "reported": reported}
        reported.append(sent)
    return {"reported": reported}


def _report_hour(self: Task, start: datetime, again: bool) -> dict[str, Any] | None:
    """Send one hour (unless recorded already and not asked `again`), then record it; None if
    another run holds it."""
    task = contracts.SEND_USAGE_STATISTICS
    pinned = {"period_start": start.isoformat()}  # what a re-drive of this hour sends
    with periodic_lock(
        lock_client(app_settings(self.app).redis),
        f"{task.name}:{start.isoformat()}",
        ttl=task.time_limit,
    ) as acquired:
        if not acquired:
            return None
        with session_scope() as session:
            if not again and usage.is_recorded(session, start):
                return {"period_start": pinned["period_start"], "status_code": None}
            report = usage.usage_report(session, start, start + usage.HOUR)
            digest = content_digest(report)
            # Same numbers, same key; recomputed numbers that differ go under a key of their own.
            revision = usage.revision_for(session, start, digest)
        try:
            code = deliver(
                self, task, pinned, lambda: users(self).send_usage_statistics(report, revision)
            )
        except Exception as exc:
            # refused for good (a failed delivery to re-drive): later hours go on
            if not is_retryable(exc):
                with session_scope() as session:
                    usage.record(session, start, "refused", revision, digest)
            raise
        with session_scope() as session:
            usage.record(session, start, "accepted", revision, digest)
    return {
        "period_start": pinned["period_start"],
        "users": len(report["users"]),
        "revision": revision,
        "status_code": code,
    }


def send_system_notification(self: Task, args: SystemNotificationArgs) -> dict[str, Any]:
    """Send a system notification; the sender's key, or this task's id (stable across retries)."""
    key = args.idempotency_key or self.request.id
    body = args.model_dump(mode="json", exclude={"idempotency_key"})
    pinned = {**body, "idempotency_key": key}  # a re-drive runs under a new task id, same key
    try:  # also for tasks sent by other clients (not through the API's check)
        with session_scope() as session:
            notification_keys.claim(session, key, body, self.request.id)
    except notification_keys.KeyReused as exc:
        raise PermanentTaskError(str(exc)) from None
    code = deliver(
        self,
        contracts.SEND_SYSTEM_NOTIFICATION,
        pinned,
        lambda: users(self).send_notification(body, key),
    )
    return {"idempotency_key": key, "recipients": len(args.user_ids), "status_code": code}


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
    define_task(app, contracts.SEND_QUERY_RESULT)(send_query_result_to_users)
    define_task(app, contracts.SEND_USAGE_STATISTICS)(send_usage_statistics)
    define_task(app, contracts.SEND_SYSTEM_NOTIFICATION)(send_system_notification)
