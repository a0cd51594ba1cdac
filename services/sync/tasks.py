"""Tasks of the `sync` queue: keep Qdrant equal to what Ingest serves (SPEC §2)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from sqlalchemy import delete, select, update

from ragcore.broker import broker_client, stop_flags
from ragcore.clients.breaker import breaker
from ragcore.clients.ingest import DocumentNotFound, IngestClient, Page
from ragcore.clients.transport import shared_http_client
from ragcore.clients.vectorstore import VectorStore, point_id
from ragcore.db import insert_for, session_scope
from ragcore.db.models import FullSyncPage, SyncState
from ragcore.query.cache import bump_data_version
from ragcore.settings import get_settings
from ragcore.tasks import contracts, ledger
from ragcore.tasks.app import define_task, will_retry
from ragcore.tasks.contracts import DocumentArgs, NoArgs, SyncEmbeddingsArgs
from ragcore.tasks.locks import lock_client, periodic_lock
from ragcore.tasks.states import TaskState
from services.sync.copier import CopyReport, copy_pages, write_in_generation
from services.sync.drain import DocumentBusy, check_not_stale, drain, record_applied

log = logging.getLogger(__name__)

INCREMENTAL = "incremental"
#: The SyncState row whose `version` is the sync generation every write to Qdrant tags points with.
GENERATION = "generation"
#: A full sync reports progress at most this often (and once at the end).
PROGRESS_SECONDS = 1.0
#: The drain claims new batches during this share of its soft time limit; the rest finishes what it
#: claimed.
CLAIM_FRACTION = 0.8


@lru_cache
def _store() -> VectorStore:
    # One per worker process (created after the prefork fork, on first use).
    store = VectorStore(get_settings())
    store.ensure_collection()
    return store


def _ingest() -> IngestClient:
    settings = get_settings()
    return IngestClient(
        shared_http_client(settings),
        settings.ingest_url,
        settings.ingest_token,
        breaker(contracts.INGEST, settings),
    )


@contextmanager
def _writes_qdrant() -> Iterator[None]:
    """Whatever fails inside may have written to Qdrant already: cached answers must not outlive
    that."""
    try:
        yield
    except BaseException:
        try:
            with session_scope() as session:
                bump_data_version(session)
        except Exception:
            log.exception("could not bump the data version after a failed write to Qdrant")
        raise


def current_generation() -> int:
    """The sync generation writes tag their points with; 0 until the first full sync."""
    with session_scope() as session:
        state = session.get(SyncState, GENERATION)
        return state.version if state else 0


def _begin_generation() -> int:
    """A new generation, durably, before a full sync writes anything: later writes carry it."""
    with session_scope() as session:
        insert = insert_for(session)
        first = insert(SyncState).values(key=GENERATION, version=0).on_conflict_do_nothing()
        session.execute(first)
        row = update(SyncState).where(SyncState.key == GENERATION)
        session.execute(row.values(version=SyncState.version + 1))
        state = session.get(SyncState, GENERATION)
        assert state is not None
        return state.version


def _bump_for_page(page: Page, _: CopyReport) -> None:
    """A page Qdrant applied may change a cached answer's sources: the data version moves with the
    pages, not only at the sync's end (a full sync runs for minutes)."""
    if page.items:
        with session_scope() as session:
            bump_data_version(session)


def _save_mark(report: CopyReport, changed: bool) -> None:
    """Store the incremental high-water mark, and bump the data version if Qdrant changed."""
    with session_scope() as session:
        state = session.get(SyncState, INCREMENTAL) or session.merge(SyncState(key=INCREMENTAL))
        if report.latest is not None and (
            state.high_water_mark is None or report.latest >= state.high_water_mark
        ):
            same_mark = state.high_water_mark == report.latest
            state.mark_ids = sorted(
                report.latest_ids | (set(state.mark_ids or []) if same_mark else set())
            )
            state.high_water_mark = report.latest
        if changed:
            bump_data_version(session)


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
    store = _store()
    with _writes_qdrant():
        report = copy_pages(
            _ingest().iter_pages(since=since, limit=args.batch_size),
            store,
            skip=lambda c: c.updated_at == mark and c.id in skip_ids,
            generation=current_generation,
            on_applied=_bump_for_page,
        )
    _save_mark(report, changed=report.copied > 0)
    return {
        "copied": report.copied,
        "pages": report.pages,
        "since": since.isoformat() if since else None,
        "high_water_mark": report.latest.isoformat() if report.latest else None,
    }


@dataclass(frozen=True)
class Checkpoint:
    """Where a full sync stands: the pages Qdrant applied, the cursor after them, its generation."""

    pages: int = 0
    copied: int = 0
    cursor: str | None = None
    generation: int = 0

    @property
    def finished_copy(self) -> bool:
        return self.pages > 0 and self.cursor is None


def load_checkpoint(task_id: str) -> Checkpoint:
    with session_scope() as session:
        pages = select(FullSyncPage).where(FullSyncPage.task_id == task_id)
        last = session.scalars(pages.order_by(FullSyncPage.page.desc()).limit(1)).first()
        if last is None:
            return Checkpoint()
        return Checkpoint(last.page, last.copied, last.next_cursor, last.generation)


def _record_page(
    task_id: str, page: int, next_cursor: str | None, copied: int, generation: int
) -> None:
    """The page's checkpoint, and a new data version in the same transaction: no cached answer
    outlives a page that changed its sources."""
    with session_scope() as session:
        bump_data_version(session)
        session.add(
            FullSyncPage(
                task_id=task_id,
                page=page,
                next_cursor=next_cursor,
                copied=copied,
                generation=generation,
            )
        )


def _forget_checkpoint(task_id: str) -> None:
    with session_scope() as session:
        session.execute(delete(FullSyncPage).where(FullSyncPage.task_id == task_id))


def trigger_full_sync(self: Task, args: NoArgs) -> dict[str, Any]:
    """Copy everything in a new sync generation, then remove the points of every other generation.

    Every write to Qdrant (this copy, incremental syncs, document events) tags its points with the
    generation current when it wrote, so whatever was written since this sync began survives, and
    what nobody rewrote (chunks Ingest no longer has) goes, by filter: memory does not grow with the
    collection. Each page Qdrant applied is a checkpoint in the database: a run delivered again
    (after its worker died, or handed back at a shutdown) continues after the last one, in the same
    generation. When its worker stops, it ends at a page boundary and hands itself back.
    """
    task_id = self.request.id
    resumed = load_checkpoint(task_id)
    generation = resumed.generation if resumed.pages else _begin_generation()
    store = _store()
    before = store.count()
    reported = [-PROGRESS_SECONDS]
    halt = threading.Event()
    broker = broker_client(get_settings().broker)
    applied, cursor = [resumed.pages], [resumed.cursor]

    def on_page(report: CopyReport) -> None:
        if not halt.is_set() and stop_flags.is_stopping(broker, self.request.hostname):
            halt.set()  # this worker shuts down: fetch no more, write what is fetched, hand back
            log.info(
                "the worker stops: the full sync hands itself back after the pages already fetched"
            )
        # A ledger commit and a backend write take milliseconds; per page they would slow a large
        # sync.
        if time.monotonic() - reported[0] < PROGRESS_SECONDS:
            return
        reported[0] = time.monotonic()
        done = resumed.copied + report.copied
        # Ingest does not tell the total up front: the collection's size is the estimate until the
        # end.
        ledger.report_progress(
            self, done, max(before, done), total_is_estimate=True, stage="copying"
        )

    def on_applied(page: Page, report: CopyReport) -> None:
        applied[0] += 1
        cursor[0] = page.next_cursor
        done = resumed.copied + report.copied
        _record_page(task_id, applied[0], page.next_cursor, done, generation)

    pages = (
        iter(())
        if resumed.finished_copy
        else _ingest().iter_pages(limit=get_settings().sync_batch_size, cursor=resumed.cursor)
    )
    started = time.perf_counter()
    with _writes_qdrant():
        try:
            report = copy_pages(
                pages,
                store,
                on_page=on_page,
                on_applied=on_applied,
                halt=halt,
                generation=current_generation,
            )
        except Exception as exc:
            if not will_retry(self, contracts.TRIGGER_FULL_SYNC, exc):
                # it fails for good: a new full sync starts from the first page
                _forget_checkpoint(task_id)
            raise
        # Halted before the last page: the next run goes on from here.
        if halt.is_set() and cursor[0] is not None:
            done = resumed.copied + report.copied
            waiting = {
                "done": done,
                "total": max(before, done),
                "total_is_estimate": True,
                "stage": "handed back at shutdown: resumes from its checkpoint",
            }
            ledger.handed_back(task_id, waiting)
            # Celery stores nothing for a rejected task
            self.update_state(state=TaskState.PENDING, meta=waiting)
            raise Reject("the worker stops: handed back at a page boundary", requeue=True)
        copied = time.perf_counter()
        # A newer full sync began meanwhile: the points written since carry its generation, and its
        # own removal is the one that must run; removing by ours would delete its writes.
        superseded = current_generation() != generation
        stale = 0 if superseded else store.count_other_generations(generation)
        if stale:
            store.delete_other_generations(generation)
    removed = time.perf_counter()
    _save_mark(report, changed=True)
    total = resumed.copied + report.copied
    ledger.set_progress(
        task_id, {"done": total, "total": total, "total_is_estimate": False, "stage": "done"}
    )
    _forget_checkpoint(task_id)
    return {
        "copied": total,
        "pages": resumed.pages + report.pages,
        "removed": stale,
        "points": store.count(),
        "resumed_from_page": resumed.pages,
        "generation": generation,
        "superseded": superseded,
        "seconds": {"copy": round(copied - started, 3), "remove": round(removed - copied, 3)},
    }


def _apply_document(document_id: str, action: str, occurred_at: datetime) -> None:
    """Make Qdrant hold exactly Ingest's current chunks of one document, unless a newer event was
    applied."""
    # On the broker's Redis, which never evicts: a lock an evicting cache dropped would let two runs
    # in.
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
        ids = [point_id(c.id) for c in chunks]
        with _writes_qdrant():
            write_in_generation(
                current_generation,
                lambda tag: store.replace_document(document_id, chunks, tag),
                lambda tag: store.set_generation(ids, tag),
            )
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
    # A message may carry its own limits (hard, soft); the worker applies the task's otherwise.
    _, soft = self.request.timelimit or (None, None)
    soft_limit = soft or contracts.PROCESS_SYNC_QUEUE.soft_time_limit
    report = drain(_apply_document, claim_until=time.monotonic() + CLAIM_FRACTION * soft_limit)
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
