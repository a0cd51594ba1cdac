"""Database retention: old query-cache rows are deleted, old conversations archived.

Each batch is its own short transaction, chosen by primary key, so a large table is never locked
for the whole run and a run stopped half-way keeps what it already did (the next run finishes it).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, select, update
from sqlalchemy.orm import Session

from ragcore.db.models import Conversation, Message, QueryCacheEntry

Sessions = Callable[[], AbstractContextManager[Session]]


def delete_old_query_cache(sessions: Sessions, now: datetime, days: int, batch_size: int = 1000) -> dict[str, int]:
    """Delete `query_cache` rows created more than `days` before `now`."""
    cutoff = now - timedelta(days=days)
    deleted = 0
    while True:
        with sessions() as session:
            keys = session.scalars(
                select(QueryCacheEntry.cache_key).where(QueryCacheEntry.created_at < cutoff).limit(batch_size)
            ).all()
            if keys:
                # The age is checked again: a row refreshed since the SELECT stays.
                old = (QueryCacheEntry.cache_key.in_(keys), QueryCacheEntry.created_at < cutoff)
                deleted += session.execute(delete(QueryCacheEntry).where(*old)).rowcount
        if len(keys) < batch_size:
            return {"deleted": deleted}


def archive_old_conversations(sessions: Sessions, now: datetime, days: int, batch_size: int = 500) -> dict[str, int]:
    """Archive conversations with no activity for `days`: they and their messages get `archived_at`.

    Activity is the later of the conversation's `updated_at` and its newest message, so a
    conversation still being written to is never archived, whoever forgot to touch `updated_at`.
    """
    cutoff = now - timedelta(days=days)
    recent_message = exists().where(Message.conversation_id == Conversation.id, Message.created_at >= cutoff)
    idle = (Conversation.archived_at.is_(None), Conversation.updated_at < cutoff, ~recent_message)
    conversations = messages = 0
    while True:
        with sessions() as session:
            ids = session.scalars(select(Conversation.id).where(*idle).limit(batch_size)).all()
            if ids:
                # Idleness is checked again in the UPDATE; only what it archived takes its messages along.
                archive = update(Conversation).where(Conversation.id.in_(ids), *idle).values(archived_at=now)
                archived = session.scalars(archive.returning(Conversation.id)).all()
                conversations += len(archived)
                if archived:
                    messages += session.execute(
                        update(Message)
                        .where(Message.conversation_id.in_(archived), Message.archived_at.is_(None))
                        .values(archived_at=now)
                    ).rowcount
        if len(ids) < batch_size:
            return {"archived_conversations": conversations, "archived_messages": messages}
