"""Tasks of the `sync` queue: keep Qdrant equal to what Ingest serves (SPEC §2)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from functools import partial
from typing import Any

from celery import Celery, Task

from ragcore.clients.ingest import DocumentNotFound
from ragcore.clients.vectorstore import point_id
from ragcore.db import session_scope
from ragcore.db.models import SyncState
from ragcore.query.cache import bump_data_version
from ragcore.tasks import contracts
from ragcore.tasks.app import app_settings, define_task
from ragcore.tasks.arguments import DocumentArgs, NoArgs, SyncEmbeddingsArgs
from services.sync.copier import copy_pages, write_in_generation
from services.sync.documents import document_lock, fresh_chunks
from services.sync.drain import DocumentBusy, check_not_stale, drain, record_applied
from services.sync.full_sync import trigger_full_sync
from services.sync.generations import INCREMENTAL, bump_for_page, current_generation, save_mark
from services.sync.neighbours import ingest, store, writes_qdrant

log = logging.getLogger(__name__)

#: The drain claims new batches during this share of its soft time limit; the rest finishes what it
#: claimed.
CLAIM_FRACTION = 0.8


def sync_embeddings(self: Task, args: SyncEmbeddingsArgs) -> dict[str, Any]:
    """Copy what changed since `since`, or since the last successful run's high-water mark."""
    with session_scope() as session:
        state = session.get(SyncState, INCREMENTAL)
        mark, mark_ids = (
            (state.high_water_mark, set(state.mark_ids or [])) if state else (None, set())
        )
    since = args.since or mark
    # `since` is inclusive: chunks at exactly the mark were copied last time, skip them.
    skip_ids = mark_ids if args.since is None else set()
    settings = app_settings(self.app)
    vectors = store(self.app)
    with writes_qdrant():
        report = copy_pages(
            ingest(settings).iter_pages(since=since, limit=args.batch_size),
            vectors,
            skip=lambda c: c.updated_at == mark and c.id in skip_ids,
            generation=current_generation,
            on_applied=bump_for_page,
            guard=partial(fresh_chunks, settings.redis),
        )
    save_mark(report, changed=report.copied > 0)
    return {
        "copied": report.copied,
        "pages": report.pages,
        "since": since.isoformat() if since else None,
        "high_water_mark": report.latest.isoformat() if report.latest else None,
    }


def _apply_document(app: Celery, document_id: str, action: str, occurred_at: datetime) -> None:
    """Make Qdrant hold exactly Ingest's current chunks of one document, unless a newer event was
    applied."""
    settings = app_settings(app)
    with document_lock(settings.redis, document_id) as acquired:
        if not acquired:
            raise DocumentBusy(document_id)
        with session_scope() as session:
            # A delete that failed and came due after a newer upsert would wipe a live document.
            check_not_stale(session, document_id, occurred_at)
        vectors = store(app)
        chunks = []
        if action == "upsert":
            try:
                chunks = ingest(settings).document_embeddings(document_id)
            except DocumentNotFound:
                chunks = []  # deleted in Ingest since the event: converge on its current state
        ids = [point_id(c.id) for c in chunks]
        with writes_qdrant():
            write_in_generation(
                current_generation,
                lambda tag: vectors.replace_document(document_id, chunks, tag),
                lambda tag: vectors.set_generation(ids, tag),
            )
        with session_scope() as session:
            bump_data_version(session)
            record_applied(session, document_id, occurred_at)


def delete_document_embeddings(self: Task, args: DocumentArgs) -> dict[str, Any]:
    """Remove every point of one document; deleting twice is not an error."""
    with writes_qdrant():
        store(self.app).delete_document(args.document_id)
    with session_scope() as session:
        bump_data_version(session)
    return {"document_id": args.document_id, "deleted": True}


def process_sync_queue(self: Task, args: NoArgs) -> dict[str, Any]:
    """Drain the durable sync queue, one action per document however many events it has."""
    # A message may carry its own limits (hard, soft); the worker applies the task's otherwise.
    _, soft = self.request.timelimit or (None, None)
    soft_limit = soft or contracts.PROCESS_SYNC_QUEUE.soft_time_limit
    apply = partial(_apply_document, self.app)
    report = drain(apply, claim_until=time.monotonic() + CLAIM_FRACTION * soft_limit)
    return {
        "claimed": report.claimed,
        "documents": report.documents,
        "applied": report.applied,
        "failed": report.failed,
        "stale": report.stale,
        "released": report.released,
    }


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
    define_task(app, contracts.SYNC_EMBEDDINGS)(sync_embeddings)
    define_task(app, contracts.TRIGGER_FULL_SYNC)(trigger_full_sync)
    define_task(app, contracts.DELETE_DOCUMENT_EMBEDDINGS)(delete_document_embeddings)
    define_task(app, contracts.PROCESS_SYNC_QUEUE)(process_sync_queue)
