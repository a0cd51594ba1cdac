"""Copying pages of chunks from Ingest into Qdrant, with fetching and writing overlapped.

Fetching a page (network + JSON parsing) and writing one (Qdrant upsert) take similar time; done one
after the other, they add up. A reader thread fetches ahead into a small bounded queue, and writer
threads keep a few upserts in flight, so a sync runs at the speed of the slower stage
(tests/benchmarks/full_sync.py measures it against each stage alone).

Every upsert waits for Qdrant to apply it (`wait=True`). Writes with `wait=False` and a final
`wait=True` would not be safe: Qdrant orders operations per shard, so a last small batch that lands
on one shard says nothing about the others, and a failure to apply an unwaited batch is only logged
by the server. Several waited upserts in flight keep Qdrant as busy as unwaited ones would.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from ragcore import tracing
from ragcore.clients.ingest import Chunk, Page
from ragcore.clients.vectorstore import VectorStore, point_id

_END = object()

#: Pages fetched ahead of the writers: enough to ride out a slow page, small enough to bound memory.
PREFETCH_PAGES = 4
#: Upserts in flight: one being applied by Qdrant while the next is serialised and sent.
WRITERS = 2


@dataclass
class CopyReport:
    #: Chunks Qdrant has applied (pages still in flight are not counted yet).
    copied: int = 0
    pages: int = 0
    latest: datetime | None = None
    #: Chunk ids whose updated_at equals `latest` (the next incremental run skips them).
    latest_ids: set[str] = field(default_factory=set)

    def note_page(self, page: Page) -> None:
        """Count a fetched page and keep the newest `updated_at` in it, with the ids at it."""
        self.pages += 1
        for chunk in page.items:
            if self.latest is None or chunk.updated_at > self.latest:
                self.latest, self.latest_ids = chunk.updated_at, {chunk.id}
            elif chunk.updated_at == self.latest:
                self.latest_ids.add(chunk.id)


#: Given a page's chunks, holds what keeps them consistent with document events while they are
#: written, and yields (chunks to write, chunks only to re-tag): `documents.fresh_chunks`.
Guard = Callable[[list[Chunk]], AbstractContextManager[tuple[list[Chunk], list[Chunk]]]]


@contextmanager
def unguarded(chunks: list[Chunk]) -> Iterator[tuple[list[Chunk], list[Chunk]]]:
    """Write every chunk: for a store nothing else writes to (tests, benchmarks)."""
    yield chunks, []


def write_in_generation(
    generation: Callable[[], int], write: Callable[[int], object], retag: Callable[[int], object]
) -> None:
    """`write` tagged with the current sync generation; if a full sync began meanwhile, `retag`.

    A full sync removes every point not of its generation when it ends. A write that read the old
    generation just before the sync began could land after the sync wrote the same points:
    re-reading the generation after the write catches that, and the points move to the new one.
    """
    tag = generation()
    write(tag)
    while (now := generation()) != tag:
        retag(now)
        tag = now


def prefetch(
    pages: Iterator[Page], depth: int = PREFETCH_PAGES, halt: threading.Event | None = None
) -> Iterator[Page]:
    """Iterate `pages` from a reader thread, up to `depth` pages ahead; re-raises its errors.

    Once `halt` is set the reader fetches no further page; the pages it already fetched still come.
    """
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    halt = halt or threading.Event()

    def read() -> None:
        try:
            while not halt.is_set():
                with tracing.span("sync.fetch_page"):
                    page = next(pages, None)
                if page is None:
                    break
                while not stop.is_set():
                    try:
                        buffer.put(page, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it in the task
            buffer.put(exc)

    # The reader runs in the caller's context (its trace: each page's fetch under the sync's span).
    reader = threading.Thread(
        target=contextvars.copy_context().run, args=(read,), name="ingest-prefetch", daemon=True
    )
    reader.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        reader.join(timeout=5)


def copy_pages(
    pages: Iterator[Page],
    store: VectorStore,
    skip: Callable[[Chunk], bool] = lambda _: False,
    on_page: Callable[[CopyReport], None] = lambda _: None,
    writers: int = WRITERS,
    on_applied: Callable[[Page, CopyReport], None] = lambda _, __: None,
    halt: threading.Event | None = None,
    generation: Callable[[], int] = lambda: 0,
    guard: Guard = unguarded,
) -> CopyReport:
    """Upsert every chunk of `pages` not `skip`ped, in the sync `generation` current at each write,
    each page's write inside its `guard`.

    `on_applied` hears of each page, in feed order, once Qdrant applied all its writes (a
    checkpoint).
    Once `halt` is set no further page is fetched; the ones already fetched are written.
    Returns once every write is applied; the first failed write (or fetch) is raised.
    """
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="qdrant-writer") as pool:
        copy = _Writes(pool, writers, store, generation, on_applied, guard)
        try:
            fetched = prefetch(pages, halt=halt)
            while (page := _next_or_apply(fetched, copy)) is not None:
                copy.submit(page, [c for c in page.items if not skip(c)])
                copy.report.note_page(page)
                on_page(copy.report)
            copy.apply_all()
        finally:
            copy.cancel()  # after a failure: send nothing more; the pool waits for the rest
    return copy.report


def _next_or_apply(pages: Iterator[Page], copy: _Writes) -> Page | None:
    """The next page, None at the end; a failed fetch first lets the writes in flight finish, so
    the pages fetched before it are checkpoints and a retry does not fetch them again."""
    try:
        return next(pages, None)
    except Exception:
        copy.apply_all()
        raise


class _Writes:
    """The writes of one `copy_pages`: in flight on the pool, applied oldest first."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        writers: int,
        store: VectorStore,
        generation: Callable[[], int],
        on_applied: Callable[[Page, CopyReport], None],
        guard: Guard,
    ) -> None:
        self._pool, self._writers, self._store = pool, writers, store
        self._generation, self._on_applied, self._guard = generation, on_applied, guard
        self._in_flight: deque[tuple[Future[int], set[str], Page]] = deque()
        self.report = CopyReport()

    def submit(self, page: Page, chunks: list[Chunk]) -> None:
        ids = {c.id for c in chunks}
        # A chunk updated while the sync runs comes again later in the feed: its newer version
        # must not race its older one, so it waits until the writes in flight are applied.
        overlaps = any(not ids.isdisjoint(pending) for _, pending, _ in self._in_flight)
        while self._in_flight and (overlaps or len(self._in_flight) >= self._writers):
            self._apply_oldest()
        if chunks:
            # in a copy of this context: the write's span joins the sync's trace
            future = self._pool.submit(contextvars.copy_context().run, self._write, chunks)
        else:
            # nothing to write, but its checkpoint comes in order after the pages before it
            future = Future()
            future.set_result(0)
        self._in_flight.append((future, ids, page))

    def apply_all(self) -> None:
        while self._in_flight:
            self._apply_oldest()

    def cancel(self) -> None:
        for future, _, _ in self._in_flight:
            future.cancel()

    def _write(self, chunks: list[Chunk]) -> int:
        ids = [point_id(c.id) for c in chunks]
        with (
            self._guard(chunks) as (fresh, superseded),
            tracing.span("sync.upsert_page", chunks=len(fresh)),
        ):
            kept = [point_id(c.id) for c in superseded]

            def write(tag: int) -> None:
                if fresh:
                    self._store.upsert(fresh, True, tag)
                if kept:  # what a newer event wrote stays, in the generation a full sync keeps
                    self._store.set_generation(kept, tag)

            write_in_generation(
                self._generation, write, lambda tag: self._store.set_generation(ids, tag)
            )
        return len(chunks)

    def _apply_oldest(self) -> None:
        future, _, page = self._in_flight.popleft()
        self.report.copied += future.result()
        self._on_applied(page, self.report)
