"""Copying pages of chunks from Ingest into Qdrant, with fetching and writing overlapped.

Fetching a page (network + JSON parsing) and writing one (Qdrant upsert) take similar time; done one
after the other, they add up. A reader thread fetches ahead into a small bounded queue while the
caller's thread writes, so a sync runs at the speed of the slower stage.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ragcore.ingest_client import Chunk, Page
from ragcore.vectorstore import VectorStore, point_id

_END = object()


@dataclass
class CopyReport:
    copied: int = 0
    pages: int = 0
    latest: datetime | None = None
    #: Chunk ids whose updated_at equals `latest` (the next incremental run skips them).
    latest_ids: set[str] = field(default_factory=set)


def prefetch(pages: Iterator[Page], depth: int = 4) -> Iterator[Page]:
    """Iterate `pages` from a reader thread, up to `depth` pages ahead; re-raises its errors."""
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for page in pages:
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

    reader = threading.Thread(target=read, name="ingest-prefetch", daemon=True)
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
    seen: set[str] | None = None,
) -> CopyReport:
    """Upsert every chunk of `pages` not `skip`ped; `seen` collects the point ids written."""
    report = CopyReport()
    for page in prefetch(pages):
        chunks = [c for c in page.items if not skip(c)]
        report.copied += store.upsert(chunks, wait=True)
        report.pages += 1
        for chunk in page.items:
            if report.latest is None or chunk.updated_at > report.latest:
                report.latest, report.latest_ids = chunk.updated_at, {chunk.id}
            elif chunk.updated_at == report.latest:
                report.latest_ids.add(chunk.id)
        if seen is not None:
            seen.update(point_id(c.id) for c in page.items)
        on_page(report)
    return report
