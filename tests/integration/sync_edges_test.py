"""A full sync at its edges: document events applied while its pages are in flight win, and an
Ingest outage in its middle is waited out from its checkpoint."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete

from ragcore import sync_events
from ragcore.clients.vectorstore import VectorStore, point_id
from ragcore.db import session_scope
from ragcore.db.models import SyncDocument, TaskRecord
from ragcore.settings import get_settings
from ragcore.sync_events import ChangeEvent
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.ingest import IngestApp, from_micros, start_ingest
from ragcore_dev.standins.qdrant import QdrantApp, start_qdrant
from ragcore_dev.standins.server import Running
from tests.support.stack import Stack, running_stack

COLLECTION = "sync_edges"
FEED = "/api/v1/embeddings"


@dataclass
class Rig:
    stack: Stack
    ingest: Running[IngestApp]
    qdrant: Running[QdrantApp]
    store: VectorStore

    def post_events(self, *events: tuple[str, str, datetime]) -> None:
        """Store events as `POST /api/v1/sync/events` does (this file starts no API)."""
        changes = [
            ChangeEvent.model_validate({"document_id": d, "action": a, "occurred_at": at})
            for d, a, at in events
        ]
        with session_scope() as session:
            assert sync_events.store(session, changes) == len(events)

    def texts_of(self, document_id: str) -> set[str]:
        """The texts Qdrant holds for the document."""
        points, _ = self.store.client.scroll(self.store.collection, limit=10_000, with_payload=True)
        return {
            str((p.payload or {})["text"])
            for p in points
            if (p.payload or {}).get("document_id") == document_id
        }

    def ingest_point_ids(self) -> set[str]:
        corpus = self.ingest.app.corpus
        return {point_id(c) for doc in corpus.documents().values() for c in doc.chunk_ids}


def _state(task_id: str) -> str | None:
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        return record.state if record else None


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        start_ingest(documents=12, chunks=4) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        running_stack(
            ingest_url=ingest.url, qdrant_url=qdrant.url, qdrant_collection=COLLECTION
        ) as stack,
    ):
        store = VectorStore(get_settings())
        store.ensure_collection()
        # pages of two documents; two processes: the sync and the event drain run side by side
        stack.start_worker(Queue.SYNC, sync_batch_size="8")
        yield Rig(stack, ingest, qdrant, store)
        store.close()


@pytest.fixture(autouse=True)
def healthy_neighbours(rig: Rig) -> Iterator[None]:
    yield
    rig.ingest.app.faults.clear()


def test_events_applied_while_a_page_is_held_win_over_it_after_the_full_sync_ends(rig: Rig) -> None:
    corpus = rig.ingest.app.corpus
    first = dispatch.send(rig.stack.producer, contracts.TRIGGER_FULL_SYNC)
    assert rig.stack.producer.AsyncResult(first).get(timeout=120)["points"] == 48
    deleted, revised = "doc-00002", "doc-00003"  # the feed's second page
    old = corpus.documents()[revised]

    rig.ingest.app.faults.hold(path=FEED, skip=1)
    task_id = dispatch.send(rig.stack.producer, contracts.TRIGGER_FULL_SYNC)
    wait_until(lambda: rig.ingest.app.faults.holding == 1, 60, "the second page served and held")
    # Meanwhile Ingest deletes one document of that page and revises the other; the revision keeps
    # its place in the feed (its updated_at), so no later page carries it: only its event does.
    corpus.delete_document(deleted)
    corpus.put_document(
        revised,
        texts=[t.replace("(revision 0)", "(revision 1)") for t in old.texts],
        updated_at=from_micros(old.updated_at),
    )
    now = datetime.now(UTC)
    rig.post_events((deleted, "delete", now), (revised, "upsert", now))
    drained = dispatch.send(rig.stack.producer, contracts.PROCESS_SYNC_QUEUE)
    assert rig.stack.producer.AsyncResult(drained).get(timeout=60)["applied"] == 2
    assert rig.texts_of(deleted) == set()
    revision_1 = {t for t in corpus.documents()[revised].texts}
    assert rig.texts_of(revised) == revision_1 and all("(revision 1)" in t for t in revision_1)

    rig.ingest.app.faults.clear()  # the held page, served before the events, arrives now
    result = rig.stack.producer.AsyncResult(task_id).get(timeout=120)
    assert rig.texts_of(deleted) == set(), "a deleted document came back"
    assert rig.texts_of(revised) == revision_1, "an older page overwrote a newer event"
    assert set(rig.store.iter_point_ids()) == rig.ingest_point_ids()
    assert result["points"] == 44 and result["removed"] == 0


def test_a_full_sync_waits_out_an_ingest_outage_and_resumes_from_its_checkpoint(rig: Rig) -> None:
    corpus = rig.ingest.app.corpus
    corpus.reset(documents=60, chunks=4)  # 240 chunks: 30 pages of 8
    with session_scope() as session:
        # A new corpus stamped in the past (BASE_TIME): the events the last test applied to the
        # same ids are newer than its chunks, and would keep them out.
        session.execute(delete(SyncDocument))
    rig.ingest.app.faults.set_delay(0.2)
    rig.ingest.app.log.clear()
    task_id = dispatch.send(rig.stack.producer, contracts.TRIGGER_FULL_SYNC)
    wait_until(lambda: len(rig.ingest.app.log.entries(FEED)) >= 8, 60, "a few pages fetched")
    rig.ingest.app.faults.outage(503, seconds=40)
    started = time.monotonic()
    wait_until(lambda: _state(task_id) == "RETRY", 60, "the sync waiting for Ingest")
    result: dict[str, Any] = rig.stack.producer.AsyncResult(task_id).get(timeout=400)
    healed = time.monotonic() - started

    assert set(rig.store.iter_point_ids()) == rig.ingest_point_ids()
    assert result["points"] == result["copied"] == 240
    assert result["resumed_from_page"] >= 8
    served = Counter(
        e["query"].get("cursor") for e in rig.ingest.app.log.entries(FEED) if e["status"] == 200
    )
    assert sum(served.values()) == 30 and max(served.values()) == 1, "a page was fetched twice"
    print(f"a 40 s Ingest outage mid-sync: SUCCESS {healed:.1f} s after it began")
