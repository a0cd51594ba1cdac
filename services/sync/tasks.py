"""Tasks of the `sync` queue: keep Qdrant equal to what Ingest serves (SPEC §2)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import redis
from celery import Celery, Task

from ragcore import contracts, ledger
from ragcore.breaker import breaker
from ragcore.cache import bump_data_version
from ragcore.celery_app import define_task
from ragcore.contracts import DocumentArgs, NoArgs, SyncEmbeddingsArgs
from ragcore.db import session_scope
from ragcore.db.models import SyncState
from ragcore.http import shared_http_client
from ragcore.ingest_client import DocumentNotFound, IngestClient
from ragcore.locks import periodic_lock
from ragcore.settings import get_settings
from ragcore.vectorstore import VectorStore
from services.sync.copier import CopyReport, copy_pages
from services.sync.drain import DocumentBusy, drain

INCREMENTAL = "incremental"
#: A full sync reports progress at most this often (and once at the end).
PROGRESS_SECONDS = 1.0
#: Stale point ids removed per request.
DELETE_BATCH = 1000


@lru_cache
def _store() -> VectorStore:
    # One per worker process (created after the prefork fork, on first use).
    store = VectorStore(get_settings())
    store.ensure_collection()
    return store


def _ingest() -> IngestClient:
    settings = get_settings()
    return IngestClient(shared_http_client(settings), settings.ingest_url, settings.ingest_token,
                        breaker(contracts.INGEST, settings))


@lru_cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(get_settings().cache)


def _save_mark(report: CopyReport, changed: bool) -> None:
    """Store the incremental high-water mark, and bump the data version if Qdrant changed."""
    with session_scope() as session:
        state = session.get(SyncState, INCREMENTAL) or session.merge(SyncState(key=INCREMENTAL))
        if report.latest is not None and (state.high_water_mark is None or report.latest >= state.high_water_mark):
            same_mark = state.high_water_mark == report.latest
            state.mark_ids = sorted(report.latest_ids | (set(state.mark_ids or []) if same_mark else set()))
            state.high_water_mark = report.latest
        if changed:
            bump_data_version(session)


def sync_embeddings(self: Task, args: SyncEmbeddingsArgs) -> dict[str, Any]:
    """Copy what changed since `since`, or since the last successful run's high-water mark."""
    with session_scope() as session:
        state = session.get(SyncState, INCREMENTAL)
        mark, mark_ids = (state.high_water_mark, set(state.mark_ids or [])) if state else (None, set())
    since = args.since or mark
    # `since` is inclusive: chunks at exactly the mark were copied last time, skip them.
    skip_ids = mark_ids if args.since is None else set()
    store = _store()
    report = copy_pages(
        _ingest().iter_pages(since=since, limit=args.batch_size),
        store,
        skip=lambda c: c.updated_at == mark and c.id in skip_ids,
    )
    _save_mark(report, changed=report.copied > 0)
    return {"copied": report.copied, "pages": report.pages, "since": since.isoformat() if since else None,
            "high_water_mark": report.latest.isoformat() if report.latest else None}


def trigger_full_sync(self: Task, args: NoArgs) -> dict[str, Any]:
    """Copy everything, then remove points whose chunks Ingest no longer has."""
    store = _store()
    before = store.count()
    reported = [-PROGRESS_SECONDS]

    def progress(report: CopyReport) -> None:
        # A ledger commit and a backend write take milliseconds; per page they would slow a large sync.
        if time.monotonic() - reported[0] < PROGRESS_SECONDS:
            return
        reported[0] = time.monotonic()
        # Ingest does not tell the total up front: the collection's size is the estimate until the end.
        ledger.report_progress(self, report.copied, max(before, report.copied), total_is_estimate=True, stage="copying")

    def list_existing() -> tuple[set[str], float]:
        listing = time.perf_counter()
        return set(store.iter_point_ids()), time.perf_counter() - listing

    # Only points present before the copy can be stale (the copy writes the ones it sees), so they are
    # listed while the copy runs: the scan's time hides behind the copy's. A collection that was empty
    # has nothing stale: no scan, and no need to note the ids the copy sees.
    seen: set[str] | None = set() if before else None
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-scan") as scan:
        existing = scan.submit(list_existing) if before else None
        report = copy_pages(_ingest().iter_pages(limit=get_settings().sync_batch_size), store, on_page=progress, seen=seen)
        candidates, scanned = existing.result() if existing else (set(), 0.0)
    stale = sorted(candidates - (seen or set()))
    copied = time.perf_counter()
    for start in range(0, len(stale), DELETE_BATCH):
        store.delete_points(stale[start : start + DELETE_BATCH])
    removed = time.perf_counter()
    _save_mark(report, changed=True)
    final = {"done": report.copied, "total": report.copied, "total_is_estimate": False, "stage": "done"}
    ledger.set_progress(self.request.id, final)
    return {"copied": report.copied, "pages": report.pages, "removed": len(stale), "points": store.count(),
            "seconds": {"copy": round(copied - started, 3), "scan": round(scanned, 3), "remove": round(removed - copied, 3)}}


def _apply_document(document_id: str, action: str) -> None:
    """Make Qdrant hold exactly Ingest's current chunks of one document."""
    with periodic_lock(_redis(), f"sync-document:{document_id}", ttl=300) as acquired:
        if not acquired:
            raise DocumentBusy(document_id)
        store = _store()
        chunks = []
        if action == "upsert":
            try:
                chunks = _ingest().document_embeddings(document_id)
            except DocumentNotFound:
                chunks = []  # deleted in Ingest since the event: converge on its current state
        store.replace_document(document_id, chunks)
        with session_scope() as session:
            bump_data_version(session)


def delete_document_embeddings(self: Task, args: DocumentArgs) -> dict[str, Any]:
    """Remove every point of one document; deleting twice is not an error."""
    _store().delete_document(args.document_id)
    with session_scope() as session:
        bump_data_version(session)
    return {"document_id": args.document_id, "deleted": True}


def process_sync_queue(self: Task, args: NoArgs) -> dict[str, Any]:
    """Drain the durable sync queue, one action per document however many events it has."""
    report = drain(_apply_document)
    return {"claimed": report.claimed, "documents": report.documents, "applied": report.applied, "failed": report.failed}


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
    define_task(app, contracts.SYNC_EMBEDDINGS)(sync_embeddings)
    define_task(app, contracts.TRIGGER_FULL_SYNC)(trigger_full_sync)
    define_task(app, contracts.DELETE_DOCUMENT_EMBEDDINGS)(delete_document_embeddings)
    define_task(app, contracts.PROCESS_SYNC_QUEUE)(process_sync_queue)
