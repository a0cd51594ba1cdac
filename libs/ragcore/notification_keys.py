"""The notification keys ragcore has sent under, each with its content's digest: the same
Idempotency-Key must always mean the same notification, or Users (rightly) answers 409 "already
seen" and drops the new one without a word."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ragcore.clients.users import content_digest
from ragcore.db import insert_for
from ragcore.db.models import NotificationKey


class KeyReused(ValueError):
    """The key was sent before with other content."""

    def __init__(self, key: str, first_task_id: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for a notification with other content "
            f"(task {first_task_id}); Users would drop this one as a duplicate: choose a new key"
        )
        self.first_task_id = first_task_id


def claim(session: Session, key: str, payload: dict[str, Any], task_id: str) -> None:
    """Record `key` for this content (in the caller's transaction), or raise KeyReused if it
    already stands for other content. The same content again is fine: Users counts it once."""
    digest = content_digest(payload)
    session.execute(
        insert_for(session)(NotificationKey)
        .values(key=key, digest=digest, task_id=task_id)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    first = session.execute(
        select(NotificationKey.digest, NotificationKey.task_id).where(NotificationKey.key == key)
    ).one()
    if first.digest != digest:
        raise KeyReused(key, first.task_id)
