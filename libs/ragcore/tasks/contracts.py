"""The task contracts: for each of the 15 tasks of SPEC §2 (and our extensions), its name, queue,
arguments and policy.

This module is the only place these facts live. Workers register their tasks from it; the API and
Beat send tasks by name through it and never import worker code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class Queue(str, Enum):
    SYNC = "sync"
    NOTIFICATIONS = "notifications"
    CLEANUP = "cleanup"
    USER = "user"


def _reject_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text must not contain NUL characters")  # PostgreSQL cannot store them
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key)
            _reject_nul(item)
    elif isinstance(value, list):
        for item in value:
            _reject_nul(item)
    return value


#: The NUL rule as a JSON-schema pattern, so the OpenAPI document states it too.
NO_NUL = "^[^\\x00]*$"


def _state_no_nul(schema: dict[str, Any], *_: Any) -> None:
    """Every string without a pattern or format of its own gets NO_NUL in the model's JSON
    schema."""
    if schema.get("type") == "string" and not {"pattern", "format", "enum", "const"} & set(schema):
        schema["pattern"] = NO_NUL
    for value in schema.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                _state_no_nul(item)


#: RFC 3339, what OpenAPI's "date-time" says; pydantic alone also takes numbers (epoch seconds) and
#: more.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, int | float) or (isinstance(value, str) and not _RFC3339.fullmatch(value)):
        raise ValueError("a time is an RFC 3339 string with a timezone, e.g. 2026-01-01T00:00:00Z")
    return value


#: A time as the contracts take it (SPEC §5: ISO 8601 with a timezone), never a number.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class Args(BaseModel):
    """Base of every argument model: unknown fields are refused, not silently dropped."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_state_no_nul)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)


class NoArgs(Args):
    pass


class SyncEmbeddingsArgs(Args):
    batch_size: int = Field(256, ge=1, le=500)
    since: Timestamp | None = None


class DocumentArgs(Args):
    document_id: str = Field(min_length=1, max_length=512)


class Source(BaseModel):
    document_id: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class QueryResultArgs(Args):
    user_id: str = Field(min_length=1)
    conversation_id: str = Field(min_length=1)
    message_id: str = Field(min_length=1)
    query: str
    answer: str
    sources: list[Source]
    tokens_used: int = Field(ge=0)
    processing_time_ms: float = Field(ge=0)


class SystemNotificationArgs(Args):
    notification_type: str = Field(min_length=1, max_length=64)
    title: str = Field(min_length=1, max_length=200)
    message: str = Field(min_length=1, max_length=10_000)
    user_ids: list[str] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The Users system de-duplicates by this; the sender chooses it (SPEC §5). One key, one
    #: content: a key ragcore sent with other content is refused (ragcore.notification_keys).
    idempotency_key: str | None = Field(None, min_length=1, max_length=256, pattern=NO_NUL)


class UsageStatisticsArgs(Args):
    #: The hour to report (its start); by default the last complete hour. Pinned on retries and
    #: re-drives, so a report that fails is sent again for the same period under the same key.
    period_start: Timestamp | None = None


class DaysArgs(Args):
    days: int = Field(ge=1, le=3650)


class CleanupQueryCacheArgs(DaysArgs):
    days: int = Field(30, ge=1, le=3650)


class CleanupConversationsArgs(DaysArgs):
    days: int = Field(90, ge=1, le=3650)


class UserArgs(Args):
    user_id: str = Field(min_length=1, max_length=256)


class CanaryArgs(Args):
    echo: str = "ok"
    #: Test-only: run this long, reporting progress (capped below the canary's soft time limit).
    sleep_seconds: float = Field(0, ge=0, le=8)
    #: Test-only: fail permanently (a traceback to show, or hide).
    fail: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 300.0

    def countdown(self, retries: int, jitter: float) -> float:
        """Exponential backoff, full jitter (jitter in [0, 1))."""
        return min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0**retries) * (
            0.5 + jitter / 2
        )


@dataclass(frozen=True)
class TaskContract:
    name: str
    queue: Queue
    args: type[Args]
    retry: RetryPolicy
    soft_time_limit: int
    time_limit: int
    #: Whether the result backend holds the task's live state (STARTED) and result. Without it
    #: (tasks sent per query, which nobody polls) the ledger alone does: status answers from it;
    #: each backend write costs a short task a sizeable share of its throughput.
    store_result: bool = True
    #: Whether runs must never overlap (a Beat-driven sweep): a run that finds another one holding
    #: the task's lock returns `SKIPPED` at once (`define_task` applies the lock).
    exclusive: bool = False
    #: The neighbour the task delivers to (its circuit breaker, its waiting deliveries), if any.
    neighbour: str | None = None

    def validate(self, kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """Arguments as they travel: validated, JSON-ready, defaults filled in."""
        return self.args.model_validate(kwargs or {}).model_dump(mode="json", exclude_none=True)


_NET = RetryPolicy(max_retries=3)
_NONE = RetryPolicy(max_retries=0)


def _c(
    name: str,
    queue: Queue,
    args: type[Args],
    retry: RetryPolicy,
    soft: int,
    hard: int,
    store: bool = True,
    exclusive: bool = False,
    neighbour: str | None = None,
) -> TaskContract:
    return TaskContract(
        name, queue, args, retry, soft, hard, store, exclusive=exclusive, neighbour=neighbour
    )


#: The neighbours (SPEC §5), each behind its circuit breaker; deliveries go to Users.
USERS, INGEST = "users", "ingest"


# The soft limit comes 10 s (short tasks) to 100 s (half-hour ones) before the hard one: room for a
# task to end cleanly before the kill. Each queue's grace period (deploy/k8s/workers.yaml) is chosen
# against these hard limits, as the comments per queue below and the one there say. sync: grace 300
# s covers the drain and a document; the full sync hands itself back at a page boundary; an
# incremental sync cut by the grace period is re-queued (lost-worker detection) and runs again.
SYNC_EMBEDDINGS = _c("sync_embeddings_task", Queue.SYNC, SyncEmbeddingsArgs, _NET, 1700, 1800)
PROCESS_SYNC_QUEUE = _c("process_sync_queue", Queue.SYNC, NoArgs, _NONE, 280, 300)
TRIGGER_FULL_SYNC = _c(
    "trigger_full_sync_task", Queue.SYNC, NoArgs, RetryPolicy(max_retries=1), 3540, 3600
)
DELETE_DOCUMENT_EMBEDDINGS = _c(
    "delete_document_embeddings_task", Queue.SYNC, DocumentArgs, _NET, 110, 120
)

# notifications: grace 300 s covers every one of these.
SEND_QUERY_RESULT = _c(
    "send_query_result_to_users",
    Queue.NOTIFICATIONS,
    QueryResultArgs,
    _NET,
    50,
    60,
    store=False,
    neighbour=USERS,
)
SEND_USAGE_STATISTICS = _c(
    "send_usage_statistics",
    Queue.NOTIFICATIONS,
    UsageStatisticsArgs,
    _NET,
    280,
    300,
    neighbour=USERS,
)
SEND_SYSTEM_NOTIFICATION = _c(
    "send_system_notification",
    Queue.NOTIFICATIONS,
    SystemNotificationArgs,
    _NET,
    50,
    60,
    neighbour=USERS,
)

# cleanup: grace 600 s covers all but the conversations' archiving, which is re-queued if cut.
CLEANUP_OLD_CACHE = _c("cleanup_old_cache", Queue.CLEANUP, NoArgs, _NONE, 540, 600, exclusive=True)
CLEANUP_QUERY_CACHE = _c(
    "cleanup_query_cache", Queue.CLEANUP, CleanupQueryCacheArgs, _NONE, 540, 600, exclusive=True
)
CLEANUP_OLD_CONVERSATIONS = _c(
    "cleanup_old_conversations", Queue.CLEANUP, CleanupConversationsArgs, _NONE, 1700, 1800
)
CLEANUP_FAILED_TASKS = _c("cleanup_failed_tasks", Queue.CLEANUP, NoArgs, _NONE, 540, 600)

# user: grace 300 s covers every one of these.
RESET_USER_DAILY_LIMIT = _c("reset_user_daily_limit", Queue.USER, UserArgs, _NET, 50, 60)
RESET_ALL_DAILY_LIMITS = _c(
    "reset_all_daily_limits", Queue.USER, NoArgs, _NET, 280, 300, exclusive=True
)
UPDATE_USER_STATISTICS = _c(
    "update_user_statistics", Queue.USER, UserArgs, _NET, 50, 60, store=False
)
CALCULATE_USER_TIER = _c("calculate_user_tier", Queue.USER, UserArgs, _NET, 50, 60)

#: The 15 tasks of SPEC §2.
TASKS: tuple[TaskContract, ...] = (
    SYNC_EMBEDDINGS, PROCESS_SYNC_QUEUE, TRIGGER_FULL_SYNC, DELETE_DOCUMENT_EMBEDDINGS,
    SEND_QUERY_RESULT, SEND_USAGE_STATISTICS, SEND_SYSTEM_NOTIFICATION,
    CLEANUP_OLD_CACHE, CLEANUP_QUERY_CACHE, CLEANUP_OLD_CONVERSATIONS, CLEANUP_FAILED_TASKS,
    RESET_USER_DAILY_LIMIT, RESET_ALL_DAILY_LIMITS, UPDATE_USER_STATISTICS, CALCULATE_USER_TIER,
)  # fmt: skip

#: Tasks beyond SPEC §2, on a Beat entry of their own: retention of the tables that would grow
#: without bound (ledger, failed deliveries, sync events, query cache; see services/cleanup).
APPLY_RETENTION = _c("apply_retention", Queue.CLEANUP, NoArgs, _NONE, 1700, 1800, exclusive=True)
EXTENSIONS: tuple[TaskContract, ...] = (APPLY_RETENTION,)

#: One canary per queue: proves a worker consumes its queue (tests, health checks).
CANARIES: dict[Queue, TaskContract] = {
    q: _c(f"ragcore.canary.{q.value}", q, CanaryArgs, _NONE, 10, 15) for q in Queue
}

#: What an exclusive task returns when another run of it holds the lock.
SKIPPED = {"skipped": "already running"}

BY_NAME: dict[str, TaskContract] = {c.name: c for c in (*TASKS, *EXTENSIONS, *CANARIES.values())}


def contract(name: str) -> TaskContract:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no task contract named {name!r}") from None


def deliveries_to(neighbour: str) -> list[str]:
    """Names of the tasks that deliver to `neighbour`."""
    return [c.name for c in TASKS if c.neighbour == neighbour]


def neighbours() -> tuple[str, ...]:
    return (USERS, INGEST)


def longest_time_limit() -> int:
    return max(c.time_limit for c in BY_NAME.values())
