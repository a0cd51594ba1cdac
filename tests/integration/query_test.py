"""POST /api/v1/query/ answers from synced documents, keeps per-user limits and a data-versioned
cache, and its two reports reach Users and the statistics exactly once — even across a broker
outage."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import kombu.exceptions
import pytest
import redis
from sqlalchemy import select

from ragcore.db import session_scope
from ragcore.db.models import Message, UserStatistics
from ragcore.query.generator import word_count
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, wait_until
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from tests.support.stack import QUERY_KEY, SYNC_KEY, Stack, running_stack

DAILY_LIMIT = 3
REPORT_FIELDS = {
    "user_id",
    "conversation_id",
    "message_id",
    "query",
    "answer",
    "sources",
    "tokens_used",
    "processing_time_ms",
}


@dataclass
class Rig:
    stack: Stack
    ingest: Running[IngestApp]
    users: Running[UsersApp]
    workers: dict[Queue, Deployable]
    beat: Deployable

    def api(self) -> httpx.Client:
        return self.stack.api(QUERY_KEY)

    def ask(self, user_id: str, query: str, **fields: Any) -> httpx.Response:
        with self.api() as api:
            return api.post("/api/v1/query/", json={"user_id": user_id, "query": query, **fields})

    def sync(self) -> dict[str, Any]:
        task_id = dispatch.send(self.stack.producer, contracts.SYNC_EMBEDDINGS)
        result: dict[str, Any] = self.stack.producer.AsyncResult(task_id).get(timeout=60)
        return result

    def settle(self) -> None:
        """Wait until no task is queued or running (earlier tests' reports included)."""
        broker = self.stack.redis_client()

        def idle() -> bool:
            if any(broker.llen(queue.value) for queue in self.workers):
                return False
            active = self.stack.producer.control.inspect(timeout=1).active() or {}
            return not any(active.values())

        wait_until(idle, 60, "idle workers")

    def restart_exited_workers(self) -> None:
        """Restart what the broker outage killed, as the deployment's restart policy does (SPEC §4).

        Celery/kombu 5.7 workers can exit on a broker outage ("Unrecoverable error: AttributeError
        ... 'hostname'" while closing the lost connection), mostly when it hits them mid-task. That
        is a worker defect of its own; this test is about the report, which must still arrive.
        """
        for queue, worker in self.workers.items():
            hostname = f"{queue.value}@test"

            def settled(worker: Deployable = worker, hostname: str = hostname) -> bool:
                if not worker.running:
                    return True
                try:
                    replies = self.stack.producer.control.ping(destination=[hostname], timeout=0.5)
                # a stale socket of the old Redis
                except (
                    redis.ConnectionError,
                    kombu.exceptions.OperationalError,
                ):
                    return False
                return any(hostname in reply for reply in replies)

            wait_until(settled, 60, f"{hostname} consuming again, or exited")
            if not worker.running:
                warnings.warn(
                    f"the {queue.value} worker exited during the broker outage; restarting it",
                    stacklevel=2,
                )
                worker.start()
                self.stack.wait_consuming(hostname, worker)

    def reports_of(self, message_id: str) -> list[dict[str, Any]]:
        return [
            d
            for d in self.users.app.deliveries("query-results")
            if d["idempotency_key"] == message_id
        ]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        start_ingest(documents=12, chunks=4) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        start_users() as users,
        running_stack(
            ingest_url=ingest.url,
            qdrant_url=qdrant.url,
            qdrant_collection="query_test",
            users_url=users.url,
            tier_daily_limits=f'{{"free": {DAILY_LIMIT}, "pro": 1000, "enterprise": 10000}}',
        ) as stack,
    ):
        # Started together, then awaited: the deployables boot in parallel.
        workers = {
            q: stack.start(f"services.{q.value}.worker", f"--hostname={q.value}@test")
            for q in (Queue.SYNC, Queue.NOTIFICATIONS, Queue.USER)
        }
        # Beat publishes the reports (its report relay); its periodic entries are not under test
        # here.
        beat = stack.start("services.beat.main", beat_schedule="{}", report_relay_seconds="0.2")
        stack.start_api()
        for queue, worker in workers.items():
            stack.wait_consuming(f"{queue.value}@test", worker)
        rig = Rig(stack, ingest, users, workers, beat)
        assert rig.sync()["copied"] == 48
        yield rig


def test_query_over_synced_documents_answers_from_the_right_chunk_and_is_reported_and_counted_once(
    rig: Rig,
) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00003"]
    response = rig.ask("alice", doc.query(2))
    assert response.status_code == 200, response.text
    body = response.json()
    best = body["sources"][0]
    assert (best["document_id"], best["chunk_id"], best["text"]) == (
        doc.id,
        doc.chunk_ids[2],
        doc.texts[2],
    )
    assert len(body["sources"]) == 5 and best["score"] > body["sources"][1]["score"]
    assert doc.topic[0] in body["answer"].lower() and body["cached"] is False
    assert body["tokens_used"] == word_count(doc.query(2), body["answer"])

    [report] = wait_until(lambda: rig.reports_of(body["message_id"]), 30, "the report to Users")
    assert set(report["payload"]) == REPORT_FIELDS
    assert {
        k: report["payload"][k] for k in ("user_id", "conversation_id", "answer", "tokens_used")
    } == {
        "user_id": "alice",
        "conversation_id": body["conversation_id"],
        "answer": body["answer"],
        "tokens_used": body["tokens_used"],
    }
    assert report["payload"]["sources"] == body["sources"]

    def counted() -> UserStatistics | None:
        with session_scope() as session:
            return session.get(UserStatistics, "alice")

    stats = wait_until(counted, 30, "alice's statistics")
    assert (
        isinstance(stats, UserStatistics)
        and stats.total_queries == 1
        and stats.total_tokens == body["tokens_used"]
    )
    assert (
        rig.users.app.duplicates["query-results"] == 0
        and len(rig.reports_of(body["message_id"])) == 1
    )


def test_a_conversation_continues_and_an_unknown_conversation_is_404(rig: Rig) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00005"]
    first = rig.ask("bob", doc.query(0)).json()
    second = rig.ask("bob", doc.query(1), conversation_id=first["conversation_id"])
    assert (
        second.status_code == 200 and second.json()["conversation_id"] == first["conversation_id"]
    )
    unknown = rig.ask("bob", doc.query(1), conversation_id="no-such-conversation")
    assert unknown.status_code == 404 and "no-such-conversation" in unknown.json()["detail"]
    assert (
        rig.ask("mallory", doc.query(1), conversation_id=first["conversation_id"]).status_code
        == 404
    )


def test_filters_restrict_the_sources_to_matching_chunks(rig: Rig) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00006"]
    other_category = next(
        d for d in rig.ingest.app.corpus.documents().values() if d.category != doc.category
    )
    body = rig.ask(
        "carol", doc.query(1), top_k=10, filters={"category": other_category.category}
    ).json()
    assert body["sources"] and {s["metadata"]["category"] for s in body["sources"]} == {
        other_category.category
    }
    body = rig.ask("carol", doc.query(1), filters={"document_id": doc.id}).json()
    assert {s["document_id"] for s in body["sources"]} == {doc.id} and body["sources"][0][
        "chunk_id"
    ] == doc.chunk_ids[1]


def test_a_repeated_query_is_cached_until_a_sync_changes_the_data(rig: Rig) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00007"]
    first = rig.ask("dave", doc.query(3)).json()
    again = rig.ask("dave", doc.query(3)).json()
    assert (
        again["cached"] is True and again["answer"] == first["answer"] and again["tokens_used"] == 0
    )
    new_text = doc.texts[3].replace("(revision 0)", "(revision 1), rewritten after the review")
    rig.ingest.app.corpus.put_document(doc.id, texts=[*doc.texts[:3], new_text])
    assert rig.sync()["copied"] == 4
    after = rig.ask("dave", doc.query(3)).json()
    assert (
        after["cached"] is False
        and after["sources"][0]["text"] == new_text
        and "rewritten after the review" in after["answer"]
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "x"}, "user_id"),
        ({"user_id": "u", "query": "   "}, "query"),
        ({"user_id": "u", "query": "x", "top_k": 0}, "top_k"),
        ({"user_id": "u", "query": "x", "top_k": 51}, "top_k"),
        ({"user_id": "u", "query": "x", "filters": {"category": 1.5}}, "filters"),
        ({"user_id": "u", "query": "x", "unexpected": 1}, "unexpected"),
        ({"user_id": "u", "query": "x", "filters": {"a b": "c"}}, "filters"),
        ({"user_id": "u\u0000", "query": "x"}, "NUL"),
    ],
)
def test_invalid_input_is_422_with_a_message_naming_the_field(
    rig: Rig, body: dict[str, Any], field: str
) -> None:
    with rig.api() as api:
        response = api.post("/api/v1/query/", json=body)
    assert response.status_code == 422 and field in response.json()["detail"]


def test_the_query_needs_a_key_with_the_query_scope(rig: Rig) -> None:
    with rig.stack.api(SYNC_KEY) as api:
        assert api.post("/api/v1/query/", json={"user_id": "u", "query": "x"}).status_code == 403
    with rig.stack.api(None) as api:
        assert api.post("/api/v1/query/", json={"user_id": "u", "query": "x"}).status_code == 401


def test_over_the_daily_limit_is_429_with_the_reset_time_until_reset_all_daily_limits(
    rig: Rig,
) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00008"]
    for i in range(DAILY_LIMIT):
        assert rig.ask("erin", doc.query(i)).status_code == 200
    refused = rig.ask("erin", doc.query(0))
    assert refused.status_code == 429
    body = refused.json()
    assert body["daily_limit"] == DAILY_LIMIT and "daily limit" in body["detail"]
    resets_at = datetime.fromisoformat(body["resets_at"])
    assert (resets_at.hour, resets_at.minute) == (0, 0) and int(refused.headers["Retry-After"]) > 0
    task_id = dispatch.send(rig.stack.producer, contracts.RESET_ALL_DAILY_LIMITS)
    assert rig.stack.producer.AsyncResult(task_id).get(timeout=30)["reset"] >= 1
    assert rig.ask("erin", doc.query(0)).status_code == 200


def test_with_the_broker_stopped_a_query_still_answers_and_reports_to_users_once_after_it_returns(
    rig: Rig,
) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00009"]
    rig.settle()  # the outage hits this query's reports, not earlier tests' tasks in flight
    rig.stack.redis.stop()
    try:
        response = rig.ask("frank", doc.query(1))
        assert response.status_code == 200, response.text
        message_id = response.json()["message_id"]
        # the message is the reports' intent, waiting for the relay
        with session_scope() as session:
            assert (
                session.scalar(select(Message.reported_at).where(Message.id == message_id)) is None
            )
        assert rig.reports_of(message_id) == []
    finally:
        rig.stack.redis.start()
    rig.restart_exited_workers()
    [report] = wait_until(
        lambda: rig.reports_of(message_id), 90, "the report after the broker returned"
    )
    assert report["payload"]["user_id"] == "frank"

    def counted() -> bool:
        with session_scope() as session:
            stats = session.get(UserStatistics, "frank")
            return stats is not None and stats.total_queries == 1

    wait_until(counted, 60, "frank's statistics")
    assert len(rig.reports_of(message_id)) == 1 and rig.users.app.duplicates["query-results"] == 0
