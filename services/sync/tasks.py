"""Tasks of the `sync` queue: keep Qdrant equal to what Ingest serves (SPEC §2)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from sqlalchemy import delete, select

from ragcore.tasks import contracts

from ragcore.tasks import ledger

from ragcore.broker import queue_stats as queues
from ragcore.clients.breaker import breaker
from ragcore.query.cache import bump_data_version
from ragcore.tasks.app import define_task, will_retry
from ragcore.tasks.contracts import DocumentArgs, NoArgs, SyncEmbeddingsArgs
from ragcore.db import session_scope
from ragcore.db.models import FullSyncPage, SyncState
from ragcore.clients.transport import shared_http_client
from ragcore.clients.ingest import DocumentNotFound, IngestClient, Page
from ragcore.tasks.locks import lock_client, periodic_lock
from ragcore.settings import get_settings
from ragcore.clients.vectorstore import VectorStore, point_id
from services.sync.copier import CopyReport, copy_pages
from services.sync.drain import DocumentBusy, check_not_stale, drain, record_applied

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

INCREMENTAL = "incremental"
#: A full sync reports progress at most this often (and once at the end).
PROGRESS_SECONDS = 1.0
#: Stale point ids removed per request.
DELETE_BATCH = 1000
#: The drain claims new batches during this share of its soft time limit; the rest finishes what it claimed.
CLAIM_FRACTION = 0.8


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


@contextmanager
def _writes_qdrant() -> Iterator[None]:
    """Whatever fails inside may have written to Qdrant already: cached answers must not outlive that."""
    try:
        yield
    except BaseException:
        try:
            with session_scope() as session:
                bump_data_version(session)
        except Exception:
            log.exception("could not bump the data version after a failed write to Qdrant")
        raise


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
    with _writes_qdrant():
        report = copy_pages(
            _ingest().iter_pages(since=since, limit=args.batch_size),
            store,
            skip=lambda c: c.updated_at == mark and c.id in skip_ids,
        )
    _save_mark(report, changed=report.copied > 0)
    return {"copied": report.copied, "pages": report.pages, "since": since.isoformat() if since else None,
            "high_water_mark": report.latest.isoformat() if report.latest else None}


@dataclass(frozen=True)
class Checkpoint:
    """Where a full sync stands: the pages Qdrant applied, the cursor after them, the points they held."""

    pages: int = 0
    copied: int = 0
    cursor: str | None = None
    seen: frozenset[str] = frozenset()

    @property
    def finished_copy(self) -> bool:
        return self.pages > 0 and self.cursor is None


def load_checkpoint(task_id: str) -> Checkpoint:
    with session_scope() as session:
        rows = session.scalars(select(FullSyncPage).where(FullSyncPage.task_id == task_id).order_by(FullSyncPage.page)).all()
        if not rows:
            return Checkpoint()
        return Checkpoint(len(rows), rows[-1].copied, rows[-1].next_cursor,
                          frozenset(pid for row in rows for pid in row.point_ids))


def _record_page(task_id: str, page: int, next_cursor: str | None, copied: int, point_ids: list[str]) -> None:
    with session_scope() as session:
        session.add(FullSyncPage(task_id=task_id, page=page, next_cursor=next_cursor, copied=copied, point_ids=point_ids))


def _forget_checkpoint(task_id: str) -> None:
    with session_scope() as session:
        session.execute(delete(FullSyncPage).where(FullSyncPage.task_id == task_id))


def trigger_full_sync(self: Task, args: NoArgs) -> dict[str, Any]:
    """Copy everything, then remove points whose chunks Ingest no longer has.

    Each page Qdrant applied is a checkpoint in the database: a run delivered again (after its worker
    died, or handed back at a shutdown) continues after the last one, and the points of the pages
    before it still count as seen. When its worker stops, it ends at a page boundary and hands itself back.
    """
    task_id = self.request.id
    resumed = load_checkpoint(task_id)
    store = _store()
    before = store.count()
    reported = [-PROGRESS_SECONDS]
    halt = threading.Event()
    broker = queues.broker_client(get_settings().broker)
    applied, cursor = [resumed.pages], [resumed.cursor]

    def on_page(report: CopyReport) -> None:
        if not halt.is_set() and queues.is_stopping(broker, self.request.hostname):
            halt.set()  # this worker shuts down: fetch no more, write what is fetched, hand back
            log.info("the worker stops: the full sync hands itself back after the pages already fetched")
        # A ledger commit and a backend write take milliseconds; per page they would slow a large sync.
        if time.monotonic() - reported[0] < PROGRESS_SECONDS:
            return
        reported[0] = time.monotonic()
        done = resumed.copied + report.copied
        # Ingest does not tell the total up front: the collection's size is the estimate until the end.
        ledger.report_progress(self, done, max(before, done), total_is_estimate=True, stage="copying")

    def on_applied(page: Page, report: CopyReport) -> None:
        applied[0] += 1
        cursor[0] = page.next_cursor
        _record_page(task_id, applied[0], page.next_cursor, resumed.copied + report.copied,
                     [point_id(c.id) for c in page.items])

    def list_existing() -> tuple[set[str], float]:
        listing = time.perf_counter()
        ids: set[str] = set()
        for pid in store.iter_point_ids():
            if halt.is_set():
                break
            ids.add(pid)
        return ids, time.perf_counter() - listing

    # Only points present before the copy can be stale (the copy writes the ones it sees), so they are
    # listed while the copy runs: the scan's time hides behind the copy's. A collection that was empty
    # has nothing stale: no scan, and no need to note the ids the copy sees.
    seen: set[str] | None = set() if before else None
    pages = iter(()) if resumed.finished_copy else \
        _ingest().iter_pages(limit=get_settings().sync_batch_size, cursor=resumed.cursor)
    started = time.perf_counter()
    with _writes_qdrant():
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-scan") as scan:
                existing = scan.submit(list_existing) if before else None
                report = copy_pages(pages, store, on_page=on_page, seen=seen, on_applied=on_applied, halt=halt)
                candidates, scanned = existing.result() if existing else (set(), 0.0)
        except Exception as exc:
            if not will_retry(self, contracts.TRIGGER_FULL_SYNC, exc):
                _forget_checkpoint(task_id)  # it fails for good: a new full sync starts from the first page
            raise
        # Halted, the scan stopped early too: unless nothing is left to do, the next run goes on from here.
        if halt.is_set() and (cursor[0] is not None or existing is not None):
            done = resumed.copied + report.copied
            waiting = {"done": done, "total": max(before, done), "total_is_estimate": True,
                       "stage": "handed back at shutdown: resumes from its checkpoint"}
            ledger.handed_back(task_id, waiting)
            self.update_state(state="PENDING", meta=waiting)  # Celery stores nothing for a rejected task
            raise Reject("the worker stops: handed back at a page boundary", requeue=True)
        stale = sorted(candidates - resumed.seen - (seen or set()))
        copied = time.perf_counter()
        for start in range(0, len(stale), DELETE_BATCH):
            store.delete_points(stale[start : start + DELETE_BATCH])
    removed = time.perf_counter()
    _save_mark(report, changed=True)
    total = resumed.copied + report.copied
    ledger.set_progress(task_id, {"done": total, "total": total, "total_is_estimate": False, "stage": "done"})
    _forget_checkpoint(task_id)
    return {"copied": total, "pages": resumed.pages + report.pages, "removed": len(stale), "points": store.count(),
            "resumed_from_page": resumed.pages,
            "seconds": {"copy": round(copied - started, 3), "scan": round(scanned, 3), "remove": round(removed - copied, 3)}}


def _apply_document(document_id: str, action: str, occurred_at: datetime) -> None:
    """Make Qdrant hold exactly Ingest's current chunks of one document, unless a newer event was applied."""
    # On the broker's Redis, which never evicts: a lock an evicting cache dropped would let two runs in.
    with periodic_lock(lock_client(), f"sync-document:{document_id}", ttl=300) as acquired:
        if not acquired:
            raise DocumentBusy(document_id)
        with session_scope() as session:
            # A delete that failed and came due after a newer upsert would wipe a live document.
            check_not_stale(session, document_id, occurred_at)
        store = _store()
        chunks = []
        if action == "upsert":
            try:
                chunks = _ingest().document_embeddings(document_id)
            except DocumentNotFound:
                chunks = []  # deleted in Ingest since the event: converge on its current state
        with _writes_qdrant():
            store.replace_document(document_id, chunks)
        with session_scope() as session:
            bump_data_version(session)
            record_applied(session, document_id, occurred_at)


def delete_document_embeddings(self: Task, args: DocumentArgs) -> dict[str, Any]:
    """Remove every point of one document; deleting twice is not an error."""
    with _writes_qdrant():
        _store().delete_document(args.document_id)
    with session_scope() as session:
        bump_data_version(session)
    return {"document_id": args.document_id, "deleted": True}


def process_sync_queue(self: Task, args: NoArgs) -> dict[str, Any]:
    """Drain the durable sync queue, one action per document however many events it has."""
    # A message may carry its own limits; the worker applies the task's otherwise.
    soft_limit = (self.request.timelimit or (None, None))[1] or contracts.PROCESS_SYNC_QUEUE.soft_time_limit
    report = drain(_apply_document, claim_until=time.monotonic() + CLAIM_FRACTION * soft_limit)
    return {"claimed": report.claimed, "documents": report.documents, "applied": report.applied, "failed": report.failed,
            "stale": report.stale, "released": report.released}


def register(app: Celery) -> None:
    """Register this queue's tasks on `app`."""
    define_task(app, contracts.SYNC_EMBEDDINGS)(sync_embeddings)
    define_task(app, contracts.TRIGGER_FULL_SYNC)(trigger_full_sync)
    define_task(app, contracts.DELETE_DOCUMENT_EMBEDDINGS)(delete_document_embeddings)
    define_task(app, contracts.PROCESS_SYNC_QUEUE)(process_sync_queue)
