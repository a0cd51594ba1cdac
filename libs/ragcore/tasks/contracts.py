"""The task contracts: for each of the 15 tasks of SPEC §2 (and our extensions), its name, queue,
arguments (their models: `ragcore.tasks.arguments`) and policy, declared by keyword.

This module is the only place these facts live. Workers register their tasks from it; the API and
Beat send tasks by name through it and never import worker code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from ragcore.tasks.arguments import (
    Args,
    CanaryArgs,
    CleanupConversationsArgs,
    CleanupQueryCacheArgs,
    DocumentArgs,
    NoArgs,
    QueryResultArgs,
    SyncEmbeddingsArgs,
    SystemNotificationArgs,
    UsageStatisticsArgs,
    UserArgs,
)


class Queue(str, Enum):
    SYNC = "sync"
    NOTIFICATIONS = "notifications"
    CLEANUP = "cleanup"
    USER = "user"


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


@dataclass(frozen=True, kw_only=True)
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


#: The neighbours (SPEC §5), each behind its circuit breaker; deliveries go to Users.
USERS, INGEST = "users", "ingest"


# The soft limit comes 10 s (short tasks) to 100 s (half-hour ones) before the hard one: room for a
# task to end cleanly before the kill. Each queue's grace period (deploy/k8s/workers.yaml) is chosen
# against these hard limits, as the comments per queue below and the one there say. sync: grace 300
# s covers the drain and a document; the full sync hands itself back at a page boundary; an
# incremental sync cut by the grace period is re-queued (lost-worker detection) and runs again.
SYNC_EMBEDDINGS = TaskContract(
    name="sync_embeddings_task",
    queue=Queue.SYNC,
    args=SyncEmbeddingsArgs,
    retry=_NET,
    soft_time_limit=1700,
    time_limit=1800,
)
PROCESS_SYNC_QUEUE = TaskContract(
    name="process_sync_queue",
    queue=Queue.SYNC,
    args=NoArgs,
    retry=_NONE,
    soft_time_limit=280,
    time_limit=300,
)
TRIGGER_FULL_SYNC = TaskContract(
    name="trigger_full_sync_task",
    queue=Queue.SYNC,
    args=NoArgs,
    # SPEC says "retry 1"; a neighbour's outage is not the sync failing, and a retry resumes from
    # the checkpoint at the cost of one page: it waits out an Ingest or Qdrant outage of a few
    # minutes (2 s doubling to 60 s, 12 times: 4-8 min) instead of throwing the pages away.
    retry=RetryPolicy(max_retries=12, backoff_base_seconds=2.0, backoff_max_seconds=60.0),
    soft_time_limit=3540,
    time_limit=3600,
)
DELETE_DOCUMENT_EMBEDDINGS = TaskContract(
    name="delete_document_embeddings_task",
    queue=Queue.SYNC,
    args=DocumentArgs,
    retry=_NET,
    soft_time_limit=110,
    time_limit=120,
)

# notifications: grace 300 s covers every one of these.
SEND_QUERY_RESULT = TaskContract(
    name="send_query_result_to_users",
    queue=Queue.NOTIFICATIONS,
    args=QueryResultArgs,
    retry=_NET,
    soft_time_limit=50,
    time_limit=60,
    store_result=False,
    neighbour=USERS,
)
SEND_USAGE_STATISTICS = TaskContract(
    name="send_usage_statistics",
    queue=Queue.NOTIFICATIONS,
    args=UsageStatisticsArgs,
    retry=_NET,
    soft_time_limit=280,
    time_limit=300,
    neighbour=USERS,
)
SEND_SYSTEM_NOTIFICATION = TaskContract(
    name="send_system_notification",
    queue=Queue.NOTIFICATIONS,
    args=SystemNotificationArgs,
    retry=_NET,
    soft_time_limit=50,
    time_limit=60,
    neighbour=USERS,
)

# cleanup: grace 600 s covers all but the conversations' archiving, which is re-queued if cut.
CLEANUP_OLD_CACHE = TaskContract(
    name="cleanup_old_cache",
    queue=Queue.CLEANUP,
    args=NoArgs,
    retry=_NONE,
    soft_time_limit=540,
    time_limit=600,
    exclusive=True,
)
CLEANUP_QUERY_CACHE = TaskContract(
    name="cleanup_query_cache",
    queue=Queue.CLEANUP,
    args=CleanupQueryCacheArgs,
    retry=_NONE,
    soft_time_limit=540,
    time_limit=600,
    exclusive=True,
)
CLEANUP_OLD_CONVERSATIONS = TaskContract(
    name="cleanup_old_conversations",
    queue=Queue.CLEANUP,
    args=CleanupConversationsArgs,
    retry=_NONE,
    soft_time_limit=1700,
    time_limit=1800,
)
CLEANUP_FAILED_TASKS = TaskContract(
    name="cleanup_failed_tasks",
    queue=Queue.CLEANUP,
    args=NoArgs,
    retry=_NONE,
    soft_time_limit=540,
    time_limit=600,
)

# user: grace 300 s covers every one of these.
RESET_USER_DAILY_LIMIT = TaskContract(
    name="reset_user_daily_limit",
    queue=Queue.USER,
    args=UserArgs,
    retry=_NET,
    soft_time_limit=50,
    time_limit=60,
)
RESET_ALL_DAILY_LIMITS = TaskContract(
    name="reset_all_daily_limits",
    queue=Queue.USER,
    args=NoArgs,
    retry=_NET,
    soft_time_limit=280,
    time_limit=300,
    exclusive=True,
)
UPDATE_USER_STATISTICS = TaskContract(
    name="update_user_statistics",
    queue=Queue.USER,
    args=UserArgs,
    retry=_NET,
    soft_time_limit=50,
    time_limit=60,
    store_result=False,
)
CALCULATE_USER_TIER = TaskContract(
    name="calculate_user_tier",
    queue=Queue.USER,
    args=UserArgs,
    retry=_NET,
    soft_time_limit=50,
    time_limit=60,
)

#: The 15 tasks of SPEC §2.
TASKS: tuple[TaskContract, ...] = (
    SYNC_EMBEDDINGS, PROCESS_SYNC_QUEUE, TRIGGER_FULL_SYNC, DELETE_DOCUMENT_EMBEDDINGS,
    SEND_QUERY_RESULT, SEND_USAGE_STATISTICS, SEND_SYSTEM_NOTIFICATION,
    CLEANUP_OLD_CACHE, CLEANUP_QUERY_CACHE, CLEANUP_OLD_CONVERSATIONS, CLEANUP_FAILED_TASKS,
    RESET_USER_DAILY_LIMIT, RESET_ALL_DAILY_LIMITS, UPDATE_USER_STATISTICS, CALCULATE_USER_TIER,
)  # fmt: skip

#: Tasks beyond SPEC §2, on a Beat entry of their own: retention of the tables that would grow
#: without bound (ledger, failed deliveries, sync events, query cache; see services/cleanup).
APPLY_RETENTION = TaskContract(
    name="apply_retention",
    queue=Queue.CLEANUP,
    args=NoArgs,
    retry=_NONE,
    soft_time_limit=1700,
    time_limit=1800,
    exclusive=True,
)
EXTENSIONS: tuple[TaskContract, ...] = (APPLY_RETENTION,)

#: One canary per queue: proves a worker consumes its queue (tests, health checks).
CANARIES: dict[Queue, TaskContract] = {
    q: TaskContract(
        name=f"ragcore.canary.{q.value}",
        queue=q,
        args=CanaryArgs,
        retry=_NONE,
        soft_time_limit=10,
        time_limit=15,
    )
    for q in Queue
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
