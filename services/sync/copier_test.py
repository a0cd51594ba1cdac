"""The copier writes every page once, keeps a bounded number of waited writes in flight, and stops
on failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from ragcore.clients.ingest import Chunk, Page
from ragcore.clients.vectorstore import VectorStore, point_id
from services.sync.copier import CopyReport, copy_pages

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def feed(pages: int, size: int = 3) -> list[Page]:
    """`pages` pages of `size` chunks, updated_at rising by page (the last page shares one
    moment)."""
    return [
        Page(
            [
                Chunk(f"p{p}-c{i}", f"doc-{p}", "text", [0.0], {}, T0 + timedelta(seconds=p))
                for i in range(size)
            ],
            None if p == pages - 1 else f"cursor-{p}",
        )
        for p in range(pages)
    ]


class RecordingStore:
    """Stands in for VectorStore.upsert: records calls and the most writes ever in flight."""

    def __init__(
        self,
        fail_on_call: int | None = None,
        hold: threading.Event | None = None,
        delay: float = 0.0,
        delays: dict[int, float] | None = None,
    ) -> None:
        self.delay = delay
        self.delays = delays or {}
        self.events: list[tuple[str, int]] = []
        self.calls: list[tuple[list[str], bool]] = []
        self.generations: list[int] = []
        self.retagged: list[tuple[list[str], int]] = []
        self.fail_on_call = fail_on_call
        self.hold = hold
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0

    def upsert(self, chunks: Iterable[Chunk], wait: bool = True, generation: int = 0) -> int:
        batch = list(chunks)
        with self._lock:
            self.calls.append(([c.id for c in batch], wait))
            self.generations.append(generation)
            number = len(self.calls)
            self.events.append(("start", number))
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.hold is not None:
                self.hold.wait(5)
            time.sleep(self.delays.get(number, self.delay))
            if number == self.fail_on_call:
                raise RuntimeError("qdrant said no")
            return len(batch)
        finally:
            with self._lock:
                self._in_flight -= 1
                self.events.append(("end", number))

    def set_generation(self, ids: Iterable[str], generation: int) -> None:
        with self._lock:
            self.retagged.append((list(ids), generation))


def as_store(store: RecordingStore) -> VectorStore:
    return cast(VectorStore, store)


def test_every_chunk_is_written_once_with_wait_and_reported() -> None:
    pages = feed(5)
    store = RecordingStore()
    progress: list[int] = []
    report = copy_pages(iter(pages), as_store(store), on_page=lambda r: progress.append(r.pages))

    written = [cid for ids, _ in store.calls for cid in ids]
    assert sorted(written) == sorted(c.id for p in pages for c in p.items)
    assert all(wait for _, wait in store.calls)
    assert report.copied == 15 and report.pages == 5 and progress == [1, 2, 3, 4, 5]
    assert report.latest == T0 + timedelta(seconds=4) and report.latest_ids == {
        c.id for c in pages[-1].items
    }


def test_skipped_chunks_are_not_written() -> None:
    pages = feed(2)
    store = RecordingStore()
    report = copy_pages(iter(pages), as_store(store), skip=lambda c: c.document_id == "doc-0")
    assert [ids for ids, _ in store.calls] == [[c.id for c in pages[1].items]]
    assert report.copied == 3 and report.pages == 2


def test_each_write_is_tagged_with_the_generation_and_retagged_if_a_full_sync_began() -> None:
    pages = feed(3)
    store = RecordingStore()
    # Read before and after each write; a full sync begins during write 2.
    reads = iter([4, 4, 4, 5, 5, 5, 5, 5])
    report = copy_pages(iter(pages), as_store(store), writers=1, generation=lambda: next(reads))
    assert report.copied == 9 and store.generations == [4, 4, 5]
    assert store.retagged == [([point_id(c.id) for c in pages[1].items], 5)]


def test_no_more_writes_than_writers_are_in_flight_and_that_many_are() -> None:
    # slow writes: every page is fetched long before its write ends
    store = RecordingStore(delay=0.02)
    assert copy_pages(iter(feed(12)), as_store(store), writers=3).copied == 36
    assert store.max_in_flight == 3


def test_a_chunk_seen_twice_has_its_newer_version_written_after_the_older_one_is_applied() -> None:
    older, newer = feed(2)
    changed = Chunk(older.items[0].id, "doc-0", "new text", [1.0], {}, T0 + timedelta(hours=1))
    pages = [older, Page([*newer.items, changed], None)]
    store = RecordingStore(delays={1: 0.05})  # the older version is slow to apply
    copy_pages(iter(pages), as_store(store), writers=2)
    assert store.events.index(("end", 1)) < store.events.index(("start", 2))


def test_a_failed_write_is_raised_and_stops_the_copy() -> None:
    store = RecordingStore(fail_on_call=2)
    read: list[int] = []

    def pages() -> Iterator[Page]:
        for number, page in enumerate(feed(50)):
            read.append(number)
            yield page

    with pytest.raises(RuntimeError, match="qdrant said no"):
        copy_pages(pages(), as_store(store), writers=1)
    assert len(store.calls) == 2  # nothing written after the failure
    assert len(read) < 50  # and the reader stopped early


def test_a_failed_fetch_is_raised() -> None:
    def pages() -> Iterator[Page]:
        yield from feed(3)
        raise ConnectionError("ingest went away")

    store = RecordingStore(delay=0.05)
    applied: list[str | None] = []
    with pytest.raises(ConnectionError, match="ingest went away"):
        copy_pages(
            pages(), as_store(store), on_applied=lambda page, _: applied.append(page.next_cursor)
        )
    # the pages fetched before it are written and checkpointed first: a retry does not fetch them
    assert len(store.calls) == 3 and applied == ["cursor-0", "cursor-1", None]


def test_a_guard_keeps_superseded_chunks_out_of_the_write_and_only_retags_them() -> None:
    @contextmanager
    def guard(chunks: list[Chunk]) -> Iterator[tuple[list[Chunk], list[Chunk]]]:
        newer = [c for c in chunks if c.document_id == "doc-1"]  # an event applied after its page
        yield [c for c in chunks if c.document_id != "doc-1"], newer

    store = RecordingStore()
    report = copy_pages(iter(feed(3)), as_store(store), guard=guard, generation=lambda: 7)
    written = {chunk for ids, _ in store.calls for chunk in ids}
    assert written == {f"p{p}-c{i}" for p in (0, 2) for i in range(3)}
    assert store.retagged == [([point_id(f"p1-c{i}") for i in range(3)], 7)]
    assert report.copied == 9  # every chunk of the feed is accounted for


def test_pages_are_fetched_while_a_write_is_in_flight() -> None:
    release = threading.Event()
    fetched = threading.Event()

    def pages() -> Iterator[Page]:
        first, *rest = feed(4)
        yield first
        yield from rest
        fetched.set()

    store = RecordingStore(hold=release)
    worker = threading.Thread(target=lambda: copy_pages(pages(), as_store(store), writers=1))
    worker.start()
    assert fetched.wait(5), "the reader should fetch ahead while the first write is held"
    release.set()
    worker.join(5)
    assert not worker.is_alive()


def test_pages_are_checkpointed_in_feed_order_only_once_applied() -> None:
    pages = feed(6)
    # the first write is the slowest: later ones finish first
    store = RecordingStore(delays={1: 0.2})
    checkpoints: list[tuple[str | None, int, int]] = []

    def applied(page: Page, report: CopyReport) -> None:
        checkpoints.append(
            (
                page.next_cursor,
                report.copied,
                sum(1 for kind, _ in store.events if kind == "end"),
            )
        )

    copy_pages(iter(pages), as_store(store), on_applied=applied)
    assert [cursor for cursor, _, _ in checkpoints] == [p.next_cursor for p in pages]
    assert [copied for _, copied, _ in checkpoints] == [3, 6, 9, 12, 15, 18]
    assert all(ended >= n + 1 for n, (_, _, ended) in enumerate(checkpoints))  # its write had ended


def test_halt_stops_fetching_but_writes_and_checkpoints_every_page_already_fetched() -> None:
    pages = feed(20)
    fetched: list[int] = []
    halt = threading.Event()

    def source() -> Iterator[Page]:
        for n, page in enumerate(pages):
            fetched.append(n)
            yield page

    applied: list[Page] = []
    report = copy_pages(
        source(),
        as_store(RecordingStore()),
        halt=halt,
        on_page=lambda r: halt.set() if r.pages == 3 else None,
        on_applied=lambda page, _: applied.append(page),
    )
    assert len(fetched) < 20  # it stopped fetching
    # nothing fetched is lost
    assert applied == pages[: len(fetched)] and report.pages == len(fetched)
