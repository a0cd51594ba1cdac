"""The full sync: copy everything in a new sync generation, then remove the points of every other
generation.

Every write to Qdrant (this copy, incremental syncs, document events) tags its points with the
generation current when it wrote, so whatever was written since this sync began survives, and what
nobody rewrote (chunks Ingest no longer has) goes, by filter: memory does not grow with the
collection. Each page Qdrant applied is a checkpoint in the database: a run delivered again (after
its worker died, or handed back at a shutdown) continues after the last one, in the same
generation. When its worker stops, it ends at a page boundary and hands itself back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Reject
from sqlalchemy import delete, select

from ragcore.broker import broker_client, held, stop_flags
from ragcore.clients.ingest import Page
from ragcore.db import session_scope
from ragcore.db.models import FullSyncPage
from ragcore.query.cache import bump_data_version
from ragcore.tasks import contracts, ledger
from ragcore.tasks.app import app_settings, will_retry
from ragcore.tasks.arguments import NoArgs
from ragcore.tasks.states import TaskState
from services.sync.copier import CopyReport, copy_pages
from services.sync.documents import fresh_chunks
from services.sync.generations import begin_generation, current_generation, save_mark
from services.sync.neighbours import ingest, store, writes_qdrant

log = logging.getLogger(__name__)

#: A full sync reports progress at most this often (and once at the end).
PROGRESS_SECONDS = 1.0


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


class FullSyncRun:
    """One delivery of the full sync, from its checkpoint: its steps are the page fetched
    (`on_page`), the page Qdrant applied (`on_applied`), the hand-back at a shutdown
    (`_hand_back`) and the removal of the other generations (`_remove_others`)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.settings = app_settings(task.app)
        self.task_id: str = task.request.id
        self.resumed = load_checkpoint(self.task_id)
        self.generation = self.resumed.generation if self.resumed.pages else begin_generation()
        self.store = store(task.app)
        self.before = self.store.count()
        #: Pages Qdrant applied so far (this run's and the ones it resumed after), and the cursor
        #: after the last of them.
        self.applied = self.resumed.pages
        self.cursor = self.resumed.cursor
        #: Set when the worker stops: fetch no more, write what is fetched, hand back.
        self.halt = threading.Event()
        self._broker = broker_client(self.settings.redis)
        self._reported = -PROGRESS_SECONDS

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        with writes_qdrant():
            report = self._copy()
            if self.halt.is_set() and self.cursor is not None:
                self._hand_back(report)  # halted before the last page: the next run goes on
            copied = time.perf_counter()
            superseded, stale = self._remove_others()
        removed = time.perf_counter()
        save_mark(report, changed=True)
        total = self._done(report)
        ledger.set_progress(
            self.task_id,
            {"done": total, "total": total, "total_is_estimate": False, "stage": "done"},
        )
        _forget_checkpoint(self.task_id)
        return {
            "copied": total,
            "pages": self.resumed.pages + report.pages,
            "removed": stale,
            "points": self.store.count(),
            "resumed_from_page": self.resumed.pages,
            "generation": self.generation,
            "superseded": superseded,
            "seconds": {"copy": round(copied - started, 3), "remove": round(removed - copied, 3)},
        }

    def _done(self, report: CopyReport) -> int:
        return self.resumed.copied + report.copied

    def _copy(self) -> CopyReport:
        pages = (
            iter(())
            if self.resumed.finished_copy
            else ingest(self.settings).iter_pages(
                limit=self.settings.neighbours.sync_batch_size, cursor=self.cursor
            )
        )
        try:
            return copy_pages(
                pages,
                self.store,
                on_page=self.on_page,
                on_applied=self.on_applied,
                halt=self.halt,
                generation=current_generation,
                guard=partial(fresh_chunks, self.settings.redis),
            )
        except Exception as exc:
            if not will_retry(self.task, contracts.TRIGGER_FULL_SYNC, exc):
                # it fails for good: a new full sync starts from the first page
                _forget_checkpoint(self.task_id)
            raise

    def on_page(self, report: CopyReport) -> None:
        """A page was fetched: stop fetching if the worker stops; report progress now and then."""
        if not self.halt.is_set() and stop_flags.is_stopping(
            self._broker, self.task.request.hostname
        ):
            self.halt.set()
            log.info(
                "the worker stops: the full sync hands itself back after the pages already fetched"
            )
        # A ledger commit and a backend write take milliseconds; per page they would slow a large
        # sync.
        if time.monotonic() - self._reported < PROGRESS_SECONDS:
            return
        self._reported = time.monotonic()
        done = self._done(report)
        # Ingest does not tell the total up front: the collection's size is the estimate until the
        # end.
        ledger.report_progress(
            self.task, done, max(self.before, done), total_is_estimate=True, stage="copying"
        )

    def on_applied(self, page: Page, report: CopyReport) -> None:
        """Qdrant applied a page: it is a checkpoint."""
        self.applied += 1
        self.cursor = page.next_cursor
        _record_page(
            self.task_id, self.applied, page.next_cursor, self._done(report), self.generation
        )

    def _hand_back(self, report: CopyReport) -> NoReturn:
        done = self._done(report)
        waiting = {
            "done": done,
            "total": max(self.before, done),
            "total_is_estimate": True,
            "stage": "handed back at shutdown: resumes from its checkpoint",
        }
        ledger.handed_back(self.task_id, waiting)
        # Celery stores nothing for a rejected task
        self.task.update_state(state=TaskState.PENDING, meta=waiting)
        # Back in its queue without a publish: waiting again, so no reconciler sends it twice.
        held.mark_published(
            broker_client(self.settings.redis),
            contracts.TRIGGER_FULL_SYNC.queue.value,
            [self.task_id],
        )
        raise Reject("the worker stops: handed back at a page boundary", requeue=True)

    def _remove_others(self) -> tuple[bool, int]:
        """Remove the points of every other generation; (superseded, how many were removed)."""
        # A newer full sync began meanwhile: the points written since carry its generation, and its
        # own removal is the one that must run; removing by ours would delete its writes.
        if current_generation() != self.generation:
            return True, 0
        stale = self.store.count_other_generations(self.generation)
        if stale:
            self.store.delete_other_generations(self.generation)
        return False, stale


def trigger_full_sync(self: Task, args: NoArgs) -> dict[str, Any]:
    """Copy everything in a new sync generation, then remove the points of every other generation
    (see the module docstring)."""
    return FullSyncRun(self).run()
