"""One document at a time: the per-document lock that document events and sync pages share, and
the rule that a page never undoes an event applied after Ingest served it.

A page reaches Qdrant seconds after Ingest served it (prefetched, then in flight). A document event
applied meanwhile (a delete, a newer upsert) is newer than the page's copy of that document: writing
the page would bring a deleted document back, tagged with the current generation so that the sync's
removal keeps it. So a page's write takes the locks of its documents, as an event does, and skips
the chunks of every document whose applied event is at least as new as the chunk (Ingest stamps
both `updated_at` and an event's `occurred_at`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime

from sqlalchemy import select

from ragcore.clients.ingest import Chunk
from ragcore.clients.transport import RetryLater
from ragcore.db import session_scope
from ragcore.db.models import SyncDocument
from ragcore.settings import RedisSettings
from ragcore.tasks.locks import all_locks, lock_client, periodic_lock

#: A crashed holder's document lock frees itself after this. An event or a page's write holds it
#: for one Qdrant write (well under a second to a few seconds); a SIGKILLed worker's locks must not
#: hold its replacement's resumed sync for minutes.
LOCK_SECONDS = 15
#: A page waits this long for an event applying one of its documents (events take milliseconds
#: to a few seconds), then its task retries.
PAGE_WAIT_SECONDS = 120.0
_POLL_SECONDS = 0.05


def lock_name(document_id: str) -> str:
    return f"sync-document:{document_id}"


def document_lock(redis_settings: RedisSettings, document_id: str) -> AbstractContextManager[bool]:
    """The lock an event holds while it applies one document; False: someone else holds it."""
    # On the broker's Redis, which never evicts: a lock an evicting cache dropped would let two
    # runs in.
    return periodic_lock(lock_client(redis_settings), lock_name(document_id), ttl=LOCK_SECONDS)


class DocumentsBusy(RetryLater):
    """Events kept a page's documents locked for PAGE_WAIT_SECONDS: the sync retries later."""


@contextmanager
def fresh_chunks(
    redis_settings: RedisSettings, chunks: list[Chunk]
) -> Iterator[tuple[list[Chunk], list[Chunk]]]:
    """Hold the locks of the chunks' documents; yields (chunks to write, chunks an applied event
    superseded). The caller writes inside the block; the superseded ones it only re-tags, so that
    a full sync's removal keeps what the event wrote."""
    documents = sorted({c.document_id for c in chunks})
    deadline = time.monotonic() + PAGE_WAIT_SECONDS
    client = lock_client(redis_settings)
    while True:
        with all_locks(client, [lock_name(d) for d in documents], ttl=LOCK_SECONDS) as acquired:
            if acquired:
                applied = _applied_events(documents)
                superseded = [
                    c
                    for c in chunks
                    if c.document_id in applied and c.updated_at <= applied[c.document_id]
                ]
                skip = {c.id for c in superseded}
                yield [c for c in chunks if c.id not in skip], superseded
                return
        if time.monotonic() >= deadline:
            raise DocumentsBusy(f"documents locked by events for {PAGE_WAIT_SECONDS:.0f} s")
        time.sleep(_POLL_SECONDS)


def _applied_events(documents: list[str]) -> dict[str, datetime]:
    if not documents:
        return {}
    with session_scope() as session:
        rows = session.execute(
            select(SyncDocument.document_id, SyncDocument.applied_occurred_at).where(
                SyncDocument.document_id.in_(documents)
            )
        )
        return {document_id: at for document_id, at in rows}
