"""The sync queue under races: events applied in order, the soft time limit honoured, caches never
stale, and its per-document locks on the broker's Redis (this worker's cache Redis is down
throughout)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from ragcore.clients.vectorstore import VectorStore, point_id
from ragcore.db import session_scope, utcnow
from ragcore.db.models import SyncEvent
from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore.tasks.locks import lock_key
from ragcore_dev.processes import free_port, wait_until
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.qdrant import QdrantApp, start_qdrant
from ragcore_dev.standins.server import Running
from tests.support.stack import QUERY_KEY, SYNC_KEY, Stack, running_stack

COLLECTION = "sync_races"


@dataclass
class Rig:
    stack: Stack
    ingest: Running[IngestApp]
    qdrant: Running[QdrantApp]
    store: VectorStore

    def run(
        self, contract: contracts.TaskContract, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        task_id = dispatch.send(self.stack.producer, contract, kwargs, **options)
        return self.stack.producer.AsyncResult(task_id).get(timeout=120, propagate=False)

    def post_events(self, *events: tuple[str, str, datetime]) -> None:
        body = {
            "events": [
                {"document_id": d, "action": a, "occurred_at": at.isoformat()}
                for d, a, at in events
            ]
        }
        with self.stack.api(SYNC_KEY) as api:
            assert api.post("/api/v1/sync/events", json=body).status_code == 202

    def points_of(self, document_id: str) -> set[str]:
        return {p for p in self.store.iter_point_ids() if p in self.ingest_points_of(document_id)}

    def ingest_points_of(self, document_id: str) -> set[str]:
        return {point_id(c) for c in self.ingest.app.corpus.documents()[document_id].chunk_ids}

    def ask(self, query: str) -> dict[str, Any]:
        with self.stack.api(QUERY_KEY) as api:
            response = api.post("/api/v1/query/", json={"user_id": "races", "query": query})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


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
        # Nothing listens there: the sync worker must not need a cache Redis at all.
        stack.start_worker(Queue.SYNC, cache_url=f"redis://127.0.0.1:{free_port()}/0")
        stack.start_api()
        rig = Rig(stack, ingest, qdrant, store)
        assert rig.run(contracts.SYNC_EMBEDDINGS)["copied"] == 48
        yield rig
        store.close()


@pytest.fixture(autouse=True)
def healthy_neighbours(rig: Rig) -> Iterator[None]:
    yield
    rig.ingest.app.faults.clear()
    rig.qdrant.app.faults.clear()


def _events_of(document_id: str) -> list[SyncEvent]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(SyncEvent).where(SyncEvent.document_id == document_id).order_by(SyncEvent.id)
            )
        )


def test_a_delete_due_after_a_newer_upsert_was_applied_is_dropped_and_the_document_keeps_its_points(
    rig: Rig,
) -> None:
    doc = "doc-00002"
    deleted_at = datetime.now(UTC) - timedelta(minutes=1)  # both events older than the next tests'
    rig.qdrant.app.faults.fail(500, times=1, path=f"/collections/{COLLECTION}/points/delete")
    rig.post_events((doc, "delete", deleted_at))
    # the delete re-pends with a backoff
    assert rig.run(contracts.PROCESS_SYNC_QUEUE)["failed"] == 1

    rig.post_events((doc, "upsert", deleted_at + timedelta(seconds=1)))  # Ingest has it again
    assert rig.run(contracts.PROCESS_SYNC_QUEUE)["applied"] == 1
    with session_scope() as session:  # the delete's backoff is over
        session.execute(
            update(SyncEvent)
            .where(SyncEvent.document_id == doc, SyncEvent.action == "delete")
            .values(available_at=utcnow())
        )

    result = rig.run(contracts.PROCESS_SYNC_QUEUE)
    assert rig.points_of(doc) == rig.ingest_points_of(doc) and len(rig.points_of(doc)) == 4
    assert (result["stale"], result["applied"], result["failed"]) == (1, 0, 0)
    assert [e.status for e in _events_of(doc)] == ["done", "done"]


def test_at_its_soft_limit_the_drain_hands_back_what_it_claimed_at_once_without_an_attempt(
    rig: Rig,
) -> None:
    docs = sorted(rig.ingest.app.corpus.documents())
    now = datetime.now(UTC)
    rig.post_events(*[(d, "upsert", now) for d in docs])
    rig.ingest.app.faults.set_delay(1.0)  # a slow Ingest: one document a second
    started = time.monotonic()
    result = rig.run(contracts.PROCESS_SYNC_QUEUE, soft_time_limit=3, time_limit=30)
    assert time.monotonic() - started < 10
    assert (
        result["failed"] == 0
        and result["released"] >= 1
        and result["applied"] + result["released"] == len(docs)
    ), result
    waiting = [e for d in docs for e in _events_of(d) if e.status != "done"]
    assert len(waiting) == result["released"]
    assert all(
        e.status == "pending" and e.attempts == 0 and e.available_at <= utcnow() for e in waiting
    )

    rig.ingest.app.faults.clear()  # the next run takes them at once, the interrupted document too
    assert rig.run(contracts.PROCESS_SYNC_QUEUE)["applied"] == result["released"]
    assert all(e.status == "done" for d in docs for e in _events_of(d))


def test_a_sync_that_fails_after_its_first_page_makes_the_next_query_a_cache_miss(rig: Rig) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00005"]
    rig.ask(doc.query(1))
    assert rig.ask(doc.query(1))["cached"] is True
    rig.ingest.app.corpus.put_document(
        doc.id, texts=[t.replace("(revision 0)", "(revision 1)") for t in doc.texts]
    )
    # the second page fails for good
    rig.ingest.app.faults.fail(404, times=1, path="/api/v1/embeddings", skip=1)
    task_id = dispatch.send(rig.stack.producer, contracts.SYNC_EMBEDDINGS, {"batch_size": 2})
    rig.stack.producer.AsyncResult(task_id).get(timeout=60, propagate=False)
    assert rig.stack.producer.AsyncResult(task_id).state == "FAILURE"

    assert rig.ask(doc.query(1))["cached"] is False


def test_the_per_document_lock_is_on_the_broker_redis_and_events_apply_without_a_cache_redis(
    rig: Rig,
) -> None:
    doc = "doc-00009"
    rig.post_events((doc, "upsert", datetime.now(UTC)))
    rig.ingest.app.faults.set_delay(1.0)
    task_id = dispatch.send(rig.stack.producer, contracts.PROCESS_SYNC_QUEUE)
    broker = rig.stack.redis_client()
    wait_until(
        lambda: broker.exists(lock_key(f"sync-document:{doc}")),
        30,
        "the document's lock on the broker",
    )
    result = rig.stack.producer.AsyncResult(task_id).get(timeout=60)
    assert (result["applied"], result["failed"]) == (1, 0)
    assert not broker.exists(lock_key(f"sync-document:{doc}"))
