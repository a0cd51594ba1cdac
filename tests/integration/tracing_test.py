"""One trace from a query to Users: the API's request, its SQL and vector search, the relay's
publish of its reports (later, in a batch), each report task (linked to the query's span) and the
request to Users carrying `traceparent`; a full sync's trace holds each page's fetch and upsert; log
lines inside a span carry its ids. Real deployables export OTLP/HTTP to a collector stand-in."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import orjson
import pytest
from sqlalchemy import select

from ragcore.db import session_scope
from ragcore.db.models import FailedDelivery
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, wait_until
from ragcore_dev.standins.collector import CollectorApp, start_collector
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from tests.support.stack import QUERY_KEY, SYNC_KEY, Stack, running_stack

Span = dict[str, Any]


@dataclass
class Rig:
    stack: Stack
    collector: Running[CollectorApp]
    ingest: Running[IngestApp]
    users: Running[UsersApp]
    api: Deployable

    def trace_of(self, name: str, **attributes: Any) -> str:
        """The trace id of the API's request span `name` (the newest), once exported."""

        def found() -> str | None:
            spans = [
                s
                for s in self.collector.app.spans()
                if s["service"] == "ragcore-api"
                and s["name"] == name
                and s["kind"] == "SERVER"
                and attributes.items() <= s["attributes"].items()
            ]
            return spans[-1]["trace_id"] if spans else None

        return wait_until(found, 30, f"the API's span {name!r}")

    def spans(self, trace_id: str) -> list[Span]:
        return self.collector.app.spans(trace_id)


def named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s["name"] == name]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        start_collector() as collector,
        start_ingest(documents=6, chunks=4) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        start_users() as users,
        # Read by every deployable the stack starts (their environment is this process's).
        mock.patch.dict(
            os.environ,
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the collector promptly
            },
        ),
        running_stack(
            ingest_url=ingest.url,
            qdrant_url=qdrant.url,
            qdrant_collection="tracing_test",
            users_url=users.url,
            sync_batch_size="10",
            delivery_redrive_base_seconds="1",  # a waiting delivery is re-driven within seconds
        ) as stack,
    ):
        workers = [
            stack.start(f"services.{q.value}.worker", f"--hostname={q.value}@test")
            for q in (Queue.SYNC, Queue.NOTIFICATIONS, Queue.USER)
        ]
        stack.start("services.beat.main", beat_schedule="{}", report_relay_seconds="0.5")
        stack.start_api()
        for q, worker in zip((Queue.SYNC, Queue.NOTIFICATIONS, Queue.USER), workers, strict=True):
            stack.wait_consuming(f"{q.value}@test", worker)
        yield Rig(stack, collector, ingest, users, stack.deployables[-1])


def full_sync(rig: Rig) -> str:
    with rig.stack.api(SYNC_KEY) as api:
        response = api.post("/api/v1/sync/trigger-full-sync")
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    rig.stack.producer.AsyncResult(task_id).get(timeout=60)
    return rig.trace_of("POST /api/v1/sync/trigger-full-sync")


def test_a_full_syncs_trace_shows_each_pages_fetch_and_upsert_under_its_task(rig: Rig) -> None:
    trace_id = full_sync(rig)

    def complete() -> list[Span] | None:
        spans = rig.spans(trace_id)
        # 24 chunks in pages of 10: three pages (and the fetch that finds no more)
        pages = len(named(spans, "sync.upsert_page"))
        return spans if pages == 3 and named(spans, "run/trigger_full_sync_task") else None

    spans = wait_until(complete, 30, "the full sync's page spans")
    [run] = named(spans, "run/trigger_full_sync_task")
    assert run["service"] == "ragcore-worker-sync"
    ids = {s["span_id"]: s for s in spans}
    for page in named(spans, "sync.fetch_page") + named(spans, "sync.upsert_page"):
        # each page's span descends from the task's run, in the API request's trace
        parent = page
        while parent["parent_span_id"] in ids and parent is not run:
            parent = ids[parent["parent_span_id"]]
        assert parent is run, page
    assert len(named(spans, "sync.fetch_page")) >= 3
    # the fetches' HTTP requests to Ingest are in the trace too, below their page's span
    fetches = {s["span_id"] for s in named(spans, "sync.fetch_page")}
    assert any(s["kind"] == "CLIENT" and s["parent_span_id"] in fetches for s in spans)


def test_one_trace_from_the_query_to_users_with_the_report_task_linked_to_the_query(
    rig: Rig,
) -> None:
    full_sync(rig)
    doc = rig.ingest.app.corpus.documents()["doc-00002"]
    with rig.stack.api(QUERY_KEY) as api:
        response = api.post("/api/v1/query/", json={"user_id": "tina", "query": doc.query(1)})
    assert response.status_code == 200, response.text
    message_id = response.json()["message_id"]
    request_id = response.headers["X-Request-ID"]
    trace_id = rig.trace_of("POST /api/v1/query/")

    # The Users request's traceparent names the query's trace.
    def delivered() -> dict[str, Any] | None:
        return next(
            (
                r
                for r in rig.users.app.log.entries("/api/v1/rag/query-results")
                if r["headers"].get("idempotency-key") == message_id
            ),
            None,
        )

    users_request = wait_until(delivered, 30, "the report's request to Users")
    version, users_trace, users_parent, _ = users_request["headers"]["traceparent"].split("-")
    assert (version, users_trace) == ("00", trace_id)

    def complete() -> list[Span] | None:
        spans = rig.spans(trace_id)
        ready = named(spans, "run/send_query_result_to_users") and named(
            spans, "run/update_user_statistics"
        )
        return spans if ready and any(s["span_id"] == users_parent for s in spans) else None

    spans = wait_until(complete, 30, "the report tasks' spans in the query's trace")
    [answer] = named(spans, "query.answer")
    assert answer["service"] == "ragcore-api"
    # the database transaction and the vector search, under the answer
    assert named(spans, "query.vector_search") and named(spans, "query.store")
    assert any(s["attributes"].get("db.system") == "postgresql" for s in spans)
    # the relay's publish of both reports: Beat's, parented on the query's span, linked to its batch
    publishes = named(spans, "report.publish")
    assert {p["service"] for p in publishes} == {"ragcore-beat"} and len(publishes) == 2
    assert all(p["parent_span_id"] == answer["span_id"] and p["links"] for p in publishes)
    # each report task's span links to the query's span
    for name in ("run/send_query_result_to_users", "run/update_user_statistics"):
        [task] = named(spans, name)
        assert {"trace_id": trace_id, "span_id": answer["span_id"]} in task["links"], task
    # the request to Users is the notifications worker's HTTP client span
    [client] = [s for s in spans if s["span_id"] == users_parent]
    assert client["kind"] == "CLIENT" and client["service"] == "ragcore-worker-notifications"

    # the API's log lines of that request carry the trace's ids beside the request id
    lines = [orjson.loads(line) for line in rig.api.logs().splitlines() if line.startswith("{")]
    access = [
        line
        for line in lines
        if line.get("logger") == "ragcore.access" and line.get("request_id") == request_id
    ]
    assert access and access[0]["trace_id"] == trace_id and len(access[0]["span_id"]) == 16


def test_a_re_driven_delivery_links_to_its_first_attempt(rig: Rig) -> None:
    doc = rig.ingest.app.corpus.documents()["doc-00004"]
    rig.users.app.faults.outage(503)  # Users down: the report's quick retries fail, then it waits
    try:
        with rig.stack.api(QUERY_KEY) as api:
            response = api.post("/api/v1/query/", json={"user_id": "uma", "query": doc.query(0)})
        assert response.status_code == 200, response.text
        message_id = response.json()["message_id"]

        def waiting() -> FailedDelivery | None:
            with session_scope() as session:
                return session.scalars(
                    select(FailedDelivery).where(
                        FailedDelivery.payload["message_id"].as_string() == message_id
                    )
                ).first()

        row = wait_until(waiting, 60, "the report waiting for a re-drive")
    finally:
        rig.users.app.faults.clear()
    assert row.traceparent, "the failed delivery keeps its first attempt's span context"
    _, first_trace, first_span, _ = row.traceparent.split("-")
    query_trace = rig.trace_of("POST /api/v1/query/")
    assert first_trace == query_trace  # the first attempt ran in the query's trace

    def redriven() -> Span | None:
        return next(
            (
                s
                for s in rig.collector.app.spans()
                if s["name"] == "run/send_query_result_to_users"
                and {"trace_id": first_trace, "span_id": first_span} in s["links"]
            ),
            None,
        )

    redrive = wait_until(redriven, 60, "the re-driven task's span, linked to the first attempt")
    assert redrive["trace_id"] != query_trace  # Beat's re-drive round, not the query, started it
    [first] = [s for s in rig.spans(first_trace) if s["span_id"] == first_span]
    assert first["name"] == "run/send_query_result_to_users"
    [publish] = wait_until(
        lambda: named(rig.spans(redrive["trace_id"]), "delivery.redrive"), 30, "Beat's re-drive"
    )
    assert {"trace_id": first_trace, "span_id": first_span} in publish["links"]
