"""Database retention: old query-cache, finished-task, resolved-delivery and done-event rows are
deleted; old conversations archived.

Each batch is its own short transaction, chosen by primary key, so a large table is never locked
for the whole run and a run stopped half-way keeps what it already did (the next run finishes it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from ragcore import deliveries
from ragcore.db import rows_affected
from ragcore.db.models import (
    Conversation,
    FailedDelivery,
    Message,
    QueryCacheEntry,
    SyncEvent,
    TaskRecord,
)
from ragcore.settings import RetentionSettings
from ragcore.sync_events import SyncEventStatus
from ragcore.tasks.states import FINISHED

Sessions = Callable[[], AbstractContextManager[Session]]


def delete_old_query_cache(
    sessions: Sessions, now: datetime, days: int, batch_size: int = 1000
) -> dict[str, int]:
    """Delete `query_cache` rows created more than `days` before `now`."""
    cutoff = now - timedelta(days=days)
    deleted = 0
    while True:
        with sessions() as session:
            keys = session.scalars(
                select(QueryCacheEntry.cache_key)
                .where(QueryCacheEntry.created_at < cutoff)
                .limit(batch_size)
            ).all()
            if keys:
                # The age is checked again: a row refreshed since the SELECT stays.
                old = (QueryCacheEntry.cache_key.in_(keys), QueryCacheEntry.created_at < cutoff)
                deleted += rows_affected(session, delete(QueryCacheEntry).where(*old))
        if len(keys) < batch_size:
            return {"deleted": deleted}


def _delete_in_batches(
    sessions: Sessions,
    key: InstrumentedAttribute[Any],
    old: tuple[ColumnElement[bool], ...],
    batch_size: int,
) -> int:
    """Delete the rows matching `old`, `batch_size` primary keys per transaction."""
    deleted = 0
    while True:
        with sessions() as session:
            keys: Sequence[Any] = session.scalars(select(key).where(*old).limit(batch_size)).all()
            if keys:
                # The conditions are checked again: a row that changed since the SELECT stays.
                deleted += rows_affected(session, delete(key.class_).where(key.in_(keys), *old))
        if len(keys) < batch_size:
            return deleted


def delete_finished_tasks(
    sessions: Sessions, now: datetime, days: int, batch_size: int = 1000
) -> int:
    """Delete ledger rows of tasks that finished more than `days` before `now`, never unfinished."""
    cutoff = now - timedelta(days=days)
    # A task finishes after it is sent: `sent_at < cutoff` is implied by `finished_at < cutoff` and
    # lets the (sent_at, task_id) index find the batch. A finished row without a finish time (none
    # is written so today) is aged by when it was sent.
    old = (
        TaskRecord.sent_at < cutoff,
        TaskRecord.state.in_(FINISHED),
        TaskRecord.finished_at.is_(None) | (TaskRecord.finished_at < cutoff),
    )
    return _delete_in_batches(sessions, TaskRecord.task_id, old, batch_size)


def delete_resolved_deliveries(
    sessions: Sessions, now: datetime, days: int, batch_size: int = 1000
) -> int:
    """Delete failed deliveries resolved (see ragcore.deliveries.RESOLVED) more than `days` ago."""
    cutoff = now - timedelta(days=days)
    resolved_at = FailedDelivery.redriven_at.is_(None) | (FailedDelivery.redriven_at < cutoff)
    old = (
        FailedDelivery.status.in_(deliveries.RESOLVED),
        FailedDelivery.created_at < cutoff,
        resolved_at,
    )
    return _delete_in_batches(sessions, FailedDelivery.id, old, batch_size)


def delete_done_sync_events(
    sessions: Sessions, now: datetime, days: int, batch_size: int = 1000
) -> int:
    """Delete sync events applied (`done`) and received more than `days` before `now`."""
    cutoff = now - timedelta(days=days)
    old = (SyncEvent.status == SyncEventStatus.DONE, SyncEvent.received_at < cutoff)
    return _delete_in_batches(sessions, SyncEvent.id, old, batch_size)


def apply_retention(sessions: Sessions, now: datetime, keep: RetentionSettings) -> dict[str, Any]:
    """Every table's retention (`settings.retention`): rows deleted per table."""
    batch = keep.batch_size
    deleted = {
        "task_ledger": delete_finished_tasks(sessions, now, keep.task_ledger_days, batch),
        "failed_deliveries": delete_resolved_deliveries(
            sessions, now, keep.failed_deliveries_days, batch
        ),
        "sync_events": delete_done_sync_events(sessions, now, keep.sync_events_days, batch),
        "query_cache": delete_old_query_cache(sessions, now, keep.query_cache_days, batch)[
            "deleted"
        ],
    }
    return {"deleted": deleted}


def archive_old_conversations(
    sessions: Sessions, now: datetime, days: int, batch_size: int = 500
) -> dict[str, int]:
    """Archive conversations with no activity for `days`: they and their messages get `archived_at`.

    Activity is the later of the conversation's `updated_at` and its newest message, so a
    conversation still being written to is never archived, whoever forgot to touch `updated_at`.
    """
    cutoff = now - timedelta(days=days)
    recent_message = exists().where(
        Message.conversation_id == Conversation.id, Message.created_at >= cutoff
    )
    idle = (Conversation.archived_at.is_(None), Conversation.updated_at < cutoff, ~recent_message)
    conversations = messages = 0
    while True:
        with sessions() as session:
            ids = session.scalars(select(Conversation.id).where(*idle).limit(batch_size)).all()
            if ids:
                # Idleness is checked again in the UPDATE; only what it archived takes its messages
                # along.
                archive = (
                    update(Conversation)
                    .where(Conversation.id.in_(ids), *idle)
                    .values(archived_at=now)
                )
                archived = session.scalars(archive.returning(Conversation.id)).all()
                conversations += len(archived)
                if archived:
                    messages += rows_affected(
                        session,
                        update(Message)
                        .where(Message.conversation_id.in_(archived), Message.archived_at.is_(None))
                        .values(archived_at=now),
                    )
        if len(ids) < batch_size:
            return {"archived_conversations": conversations, "archived_messages": messages}
