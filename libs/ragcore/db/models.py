"""The database tables of RAG Core (SQLAlchemy 2, PostgreSQL in production, SQLite locally)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware in and out, on SQLite (which forgets the zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class SyncState(Base):
    """Sync bookkeeping by key: incremental high-water marks, the data version ("data"), and the
    sync generation ("generation", in `version`) that every write to Qdrant tags its points with."""

    __tablename__ = "sync_state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    high_water_mark: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Chunk ids already copied at exactly `high_water_mark` (`since` is inclusive).
    mark_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class FullSyncPage(Base):
    """A full sync's checkpoint: one row per page Qdrant has applied, until the sync finishes.

    The last row's cursor is where a re-delivered run continues, in the same sync generation: the
    points written before it stay current, so no point ids need keeping.
    """

    __tablename__ = "full_sync_pages"
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    page: Mapped[int] = mapped_column(primary_key=True)
    #: Ingest's cursor after this page; None when it was the last one.
    next_cursor: Mapped[str | None] = mapped_column(Text)
    #: Chunks copied up to and including this page.
    copied: Mapped[int]
    #: The sync generation this full sync began (SyncState "generation").
    generation: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SyncEvent(Base):
    """The durable sync queue: document changes reported by Ingest, drained by
    process_sync_queue."""

    __tablename__ = "sync_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    document_id: Mapped[str] = mapped_column(String(512))
    action: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # a ragcore.sync_events.SyncEventStatus, written by every insert (no default here: that module
    # imports these models)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    available_at: Mapped[datetime] = mapped_column(default=utcnow)  # retry later after a failure
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None]  # a claim of a crashed run expires
    last_error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_sync_events_pending", "status", "available_at"),)


class SyncDocument(Base):
    """The newest event applied per document: an older one arriving late would undo it, so it is
    dropped."""

    __tablename__ = "sync_documents"
    document_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    applied_occurred_at: Mapped[datetime]


class UsageReport(Base):
    """An hour whose usage statistics Users accepted: never sent again, and where a catch-up
    resumes."""

    __tablename__ = "usage_reports"
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    # accepted | refused (for good: an operator re-drives it)
    outcome: Mapped[str] = mapped_column(String(16))
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: 0 for the hour as first sent (the SPEC key, the period); each recomputation whose numbers
    #: differ from those sent is the next revision, under a key of its own.
    revision: Mapped[int] = mapped_column(default=0)
    #: SHA-256 of the body sent under this revision's key (null: sent before revision 0011).
    digest: Mapped[str | None] = mapped_column(String(64))


class NotificationKey(Base):
    """Every Idempotency-Key ragcore sent a notification under, with a digest of its content: the
    same key with other content is refused here, not dropped at Users as "already seen"."""

    __tablename__ = "notification_keys"
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32))
    daily_limit: Mapped[int]
    queries_today: Mapped[int] = mapped_column(default=0)
    limit_reset_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserStatistics(Base):
    __tablename__ = "user_statistics"
    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    total_queries: Mapped[int] = mapped_column(default=0)
    total_tokens: Mapped[int] = mapped_column(default=0)
    #: The sum behind the average, so each counted message adds to it (services.user.stats).
    total_processing_time_ms: Mapped[float] = mapped_column(default=0.0)
    avg_processing_time_ms: Mapped[float] = mapped_column(default=0.0)
    last_query_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(index=True)


class Message(Base):
    """A query and its answer; also the intent of its two reports until the relay sets
    `reported_at`."""

    __tablename__ = "messages"
    # The report relay's work list: only unreported messages, so it stays small however many there
    # are.
    __table_args__ = (
        Index(
            "ix_messages_unreported",
            "created_at",
            postgresql_where=text("reported_at IS NULL"),
            sqlite_where=text("reported_at IS NULL"),
        ),
        # The user's statistics count only what is new: a user's messages not counted yet.
        Index(
            "ix_messages_uncounted",
            "user_id",
            postgresql_where=text("stats_counted_at IS NULL"),
            sqlite_where=text("stats_counted_at IS NULL"),
        ),
        # A user's tier reads their last 30 days, not their whole history.
        Index("ix_messages_user_id_created_at", "user_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(256), index=True)
    query: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[Any]]
    tokens_used: Mapped[int]
    processing_time_ms: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    archived_at: Mapped[datetime | None]
    reported_at: Mapped[datetime | None]
    #: When update_user_statistics added it to the user's counters (null: not yet).
    stats_counted_at: Mapped[datetime | None]
    #: The W3C traceparent of the query's span (tracing on): its reports' spans continue its trace.
    traceparent: Mapped[str | None] = mapped_column(String(64))


class QueryCacheEntry(Base):
    """The durable record of cached answers; Redis holds the hot copies with a TTL."""

    __tablename__ = "query_cache"
    cache_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    data_version: Mapped[int]
    query: Mapped[str] = mapped_column(Text)
    response: Mapped[dict[str, Any]]
    hits: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class FailedDelivery(Base):
    """A delivery to a neighbour that exhausted its quick retries: re-driven automatically while it
    waits (a retryable failure), else left failed for an operator to re-drive or discard."""

    __tablename__ = "failed_deliveries"
    __table_args__ = (Index("ix_failed_deliveries_due", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(128))
    task_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int]
    # a ragcore.deliveries.DeliveryStatus, written by every insert (no default here: the enum's
    # package imports these models)
    status: Mapped[str] = mapped_column(String(16))
    next_attempt_at: Mapped[datetime | None]  # when a waiting delivery is re-driven next
    # start of its re-drive window (an operator's re-drive restarts it)
    waiting_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    redriven_at: Mapped[datetime | None]
    redrive_task_id: Mapped[str | None] = mapped_column(String(64))
    #: The W3C traceparent of the first attempt's span (tracing on): each re-drive links to it.
    traceparent: Mapped[str | None] = mapped_column(String(64))


#: The predicate of the reconciler's index: ragcore.tasks.states.UNFINISHED, in SQL.
UNFINISHED_SQL = "state IN ('PENDING', 'RETRY', 'STARTED')"


class TaskRecord(Base):
    """The task ledger: every task sent through the contracts or received by a worker, and its
    lifecycle."""

    __tablename__ = "task_ledger"
    # History pages are newest first, filtered by name, state, queue or worker: each filter has an
    # index in page order. /metrics reads the window of recent tasks from the sent_at index alone,
    # the console's queues picture from the queue index (PostgreSQL: the columns each needs are
    # INCLUDEd). Measured in docs/benchmarks.md (task API at scale, console pages).
    __table_args__ = (
        Index("ix_task_ledger_name_sent_at", "name", "sent_at", "task_id"),
        Index("ix_task_ledger_state_sent_at", "state", "sent_at", "task_id"),
        Index(
            "ix_task_ledger_queue_sent_at",
            "queue",
            "sent_at",
            "task_id",
            postgresql_include=["started_at", "finished_at"],
        ),
        Index("ix_task_ledger_worker_sent_at", "worker", "sent_at", "task_id"),
        Index(
            "ix_task_ledger_sent_at_task_id",
            "sent_at",
            "task_id",
            postgresql_include=["name", "state", "run_seconds"],
        ),
        # The reconciler's work list, oldest first: only unfinished rows, so it stays as small as
        # what waits or runs however large the ledger grows (ragcore.tasks.reconcile).
        Index(
            "ix_task_ledger_unfinished",
            "sent_at",
            "task_id",
            postgresql_where=text(UNFINISHED_SQL),
            sqlite_where=text(UNFINISHED_SQL),
        ),
    )
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Null for an id revoked before any worker received it: unknown until the task shows up.
    name: Mapped[str | None] = mapped_column(String(128))
    queue: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    kwargs: Mapped[dict[str, Any]]
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: Seconds from the last start to the end of a task that succeeded or failed, written with its
    #: end: /metrics' duration histogram sums it instead of subtracting timestamps per row.
    run_seconds: Mapped[float | None]
    worker: Mapped[str | None] = mapped_column(String(256))
    retries: Mapped[int] = mapped_column(default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    revoked: Mapped[bool] = mapped_column(default=False)
    #: When the reconciler last published the task again (the broker had lost it) or ended it, and
    #: why (ragcore.tasks.reconcile.Reason).
    reconciled_at: Mapped[datetime | None]
    reconcile_reason: Mapped[str | None] = mapped_column(String(32))


class LedgerSnapshot(Base):
    """The ledger's recent aggregates as Beat last computed them (ragcore.tasks.ledger.snapshot):
    one row per aggregate, read by the API instead of aggregating the window per request."""

    __tablename__ = "ledger_snapshots"
    #: Which aggregate: "window" (/metrics' counts and durations), "activity" (the queues picture).
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: The `now` it was computed for (Beat's clock): its age is how stale the figures are.
    computed_at: Mapped[datetime]
    #: The figures, with the parameters they were computed for (window, bounds, steps).
    body: Mapped[dict[str, Any]]


class DeadLetter(Base):
    """A message no worker could run (poison), taken off its queue and kept for an operator: one
    row per distinct message (queue, reason, task name and body), counted each time it comes."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    #: SHA-256 (hex) of queue, reason, task name and the whole body: the same poison again is the
    #: same row, its count raised.
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    queue: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    task_name: Mapped[str | None] = mapped_column(String(128))
    #: The last one's task id, when the message named one.
    task_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    #: The raw body's first bytes (bytes: poison may hold NUL or invalid UTF-8).
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_bytes: Mapped[int]
    count: Mapped[int] = mapped_column(default=1)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
