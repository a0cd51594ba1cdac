"""A dependency down is a 503 that names it and carries the request id; what it said is logged under
that id only."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from ragcore.clients.ingest import Chunk
from ragcore.clients.vectorstore import VectorStore
from ragcore.db import create_schema, session_scope
from ragcore.db.models import FailedDelivery, TaskRecord
from ragcore.settings import QdrantSettings, Settings
from ragcore_dev.processes import Deployable, free_port
from ragcore_dev.servers import postgres_database
from ragcore_dev.standins.qdrant import QdrantApp, start_qdrant
from ragcore_dev.standins.server import Running
from tests.support.stack import ADMIN_KEY, QUERY_KEY, SYNC_KEY, Stack

COLLECTION = "dependency_errors"


@pytest.fixture(scope="module")
def qdrant() -> Iterator[Running[QdrantApp]]:
    """A Qdrant holding one chunk, so a query reaches the chat service."""
    with start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as running:
        store = VectorStore(Settings(qdrant=QdrantSettings(url=running.url, collection=COLLECTION)))
        store.ensure_collection()
        store.upsert(
            [
                Chunk(
                    "c1",
                    "d1",
                    "Harbor safety: helmets on the quay.",
                    [1.0] * 384,
                    {},
                    datetime.now(UTC),
                )
            ]
        )
        store.close()
        yield running


def _call(
    stack: Stack, key: str, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, str]:
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    with stack.api(key) as client:
        response = client.request(method, path, headers={"X-Request-ID": request_id}, **kwargs)
    return response, request_id


def _logged_under(api: Deployable, request_id: str) -> str:
    lines = [json.loads(line) for line in api.logs().splitlines() if line.startswith("{")]
    return "\n".join(
        e["message"] + e.get("exc_info", "") for e in lines if e.get("request_id") == request_id
    )


def _assert_names_only(
    response: httpx.Response, request_id: str, dependency: str, *internals: str
) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {
        "detail": f"{dependency} is unavailable; try again",
        "request_id": request_id,
    }
    for internal in internals:
        assert internal not in response.text


def _ask(stack: Stack) -> tuple[httpx.Response, str]:
    return _call(
        stack, QUERY_KEY, "POST", "/api/v1/query/", json={"user_id": "u1", "query": "harbor safety"}
    )


def test_the_embedding_service_down(stack: Stack, qdrant: Running[QdrantApp]) -> None:
    # An endpoint that answers 404 to /v1/embeddings: httpx's error names the URL.
    stack.start_api(qdrant_url=qdrant.url, qdrant_collection=COLLECTION, embedding_url=qdrant.url)
    response, request_id = _ask(stack)
    _assert_names_only(response, request_id, "the embedding service", qdrant.url, "404")
    assert f"{qdrant.url}/v1/embeddings" in _logged_under(stack.deployables[-1], request_id)


def test_qdrant_down(stack: Stack) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    stack.start_api(qdrant_url=closed, qdrant_collection=COLLECTION)
    response, request_id = _ask(stack)
    _assert_names_only(
        response, request_id, "the vector store (Qdrant)", closed, "Connect", "refused"
    )
    assert "the vector store (Qdrant) failed" in _logged_under(stack.deployables[-1], request_id)


def test_the_chat_service_down(stack: Stack, qdrant: Running[QdrantApp]) -> None:
    stack.start_api(qdrant_url=qdrant.url, qdrant_collection=COLLECTION, chat_url=qdrant.url)
    response, request_id = _ask(stack)
    _assert_names_only(response, request_id, "the chat service", qdrant.url, "404")
    assert f"{qdrant.url}/v1/chat/completions" in _logged_under(stack.deployables[-1], request_id)


def test_the_broker_down(stack: Stack) -> None:
    stack.start_api()
    stack.redis.stop()
    try:
        response, request_id = _call(stack, SYNC_KEY, "POST", "/api/v1/sync/trigger-full-sync")
    finally:
        stack.redis.start()
    assert response.json()["detail"] == "the broker (Redis) is unreachable; try again"
    assert response.json()["request_id"] == request_id and "Error" not in response.text
    assert "could not publish trigger_full_sync_task" in _logged_under(
        stack.deployables[-1], request_id
    )


def test_the_database_down(stack: Stack) -> None:
    with postgres_database() as database_url:
        create_schema(database_url)  # as the migration job leaves it
        stack.start_api(database_url=database_url)
        name = make_url(database_url).database
        admin = create_engine(
            make_url(database_url).set(drivername="postgresql+psycopg", database="postgres"),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        event = {"document_id": "d1", "action": "upsert", "occurred_at": "2026-01-01T00:00:00Z"}
        response, request_id = _call(
            stack, SYNC_KEY, "POST", "/api/v1/sync/events", json={"events": [event]}
        )
    _assert_names_only(
        response, request_id, "the database", name or "", "psycopg", "OperationalError"
    )
    assert name and name in _logged_under(stack.deployables[-1], request_id)


# -- every route, each dependency down ----------------------------------------------------------

#: A valid body for every operation that takes one, so the walk reaches the dependency, not a 422.
_EVENT = {"document_id": "d1", "action": "upsert", "occurred_at": "2026-01-01T00:00:00Z"}
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/query/"): {"user_id": "u1", "query": "harbor safety"},
    ("POST", "/api/v1/sync/events"): {"events": [_EVENT]},
    ("POST", "/api/v1/sync/trigger-sync"): {},
    ("POST", "/api/v1/deliveries/redrive"): {"task_name": "send_system_notification"},
    ("POST", "/api/v1/deliveries/discard"): {"task_name": "send_system_notification"},
    ("POST", "/api/v1/notifications"): {
        "notification_type": "maintenance",
        "title": "Maintenance",
        "message": "Tonight at 22:00",
        "user_ids": ["u1"],
        "idempotency_key": "walk",
    },
}
#: What a 5xx body may say: which dependency, never what it said.
DEPENDENCY_DETAILS = {
    "the broker (Redis) is unreachable; try again",
    "the database is unavailable; try again",
    "the database did not confirm the write, nothing was stored; send the request again",
    "the vector store (Qdrant) is unavailable; try again",
    "the embedding service is unavailable; try again",
    "the chat service is unavailable; try again",
}


def _operations(stack: Stack) -> list[tuple[str, str, bool]]:
    with stack.api() as client:
        schema = client.get("/openapi.json").json()
    return sorted(
        (method.upper(), path, "requestBody" in operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    )


def _walk(stack: Stack, *internals: str) -> dict[tuple[str, str], int]:
    """Every published operation, called with an admin key; a 5xx body names the dependency and
    carries the request id, and nothing else."""
    seen: dict[tuple[str, str], int] = {}
    for method, template, has_body in _operations(stack):
        path = template.replace("{delivery_id}", "1").replace("{task_id}", "t1")
        path = path.replace("{document_id}", "d1").replace("{dead_letter_id}", "1")
        if has_body:
            assert (method, template) in BODIES, f"give {method} {template} a valid body here"
        response, request_id = _call(
            stack, ADMIN_KEY, method, path, json=BODIES.get((method, template))
        )
        seen[method, template] = response.status_code
        assert response.status_code != 500, (method, template, response.text)
        if response.status_code < 500:
            continue
        body = response.json()
        if template == "/readyz":  # a probe: which checks failed, and the request id
            assert set(body) == {"status", "checks", "request_id"}, body
            assert set(body["checks"].values()) <= {"ok", "unreachable"}, body
        else:
            assert set(body) == {"detail", "request_id"}, (method, template, body)
            assert body["detail"] in DEPENDENCY_DETAILS, (method, template, body)
        assert body["request_id"] == request_id, (method, template, body)
        for internal in internals:
            assert internal not in response.text, (method, template, internal, response.text)
    return seen


def test_every_route_with_the_broker_down_names_it_and_nothing_more(stack: Stack) -> None:
    # its own Qdrant folder: a local folder admits one process, and earlier APIs hold the stack's
    stack.start_api(inspect_timeout_seconds="0.2", qdrant_path=tempfile.mkdtemp())
    with session_scope() as session:  # a delivery to re-drive, so its route reaches the broker
        session.add(
            FailedDelivery(
                id=1,
                task_name="send_usage_statistics",
                task_id="t0",
                payload={},
                error="HTTPStatusError: 503",
                attempts=3,
                status="failed",
            )
        )
    host, port = stack.redis.url.split("//")[1].split("/")[0].split(":")
    stack.redis.stop()
    try:
        seen = _walk(stack, f"{host}:{port}", "Error", "refused")
    finally:
        stack.redis.start()
    # the routes that need the broker answered 503, the re-drive of delivery 1 among them
    assert seen["POST", "/api/v1/deliveries/{delivery_id}/retry"] == 503
    assert seen["POST", "/api/v1/sync/trigger-full-sync"] == 503
    assert seen["GET", "/readyz"] == 503


def test_every_route_with_the_database_down_names_it_and_nothing_more(stack: Stack) -> None:
    port = free_port()  # nothing listens: connections are refused
    stack.start_api(
        database_url=f"postgresql://leakuser:leakpass@127.0.0.1:{port}/leakdb",
        inspect_timeout_seconds="0.2",
        qdrant_path=tempfile.mkdtemp(),
    )
    seen = _walk(stack, "leakuser", "leakpass", "leakdb", str(port), "psycopg", "Error")
    assert seen["POST", "/api/v1/sync/events"] == 503
    assert seen["GET", "/api/v1/tasks/history"] == 503
    assert seen["GET", "/readyz"] == 503


def test_a_sync_key_reads_a_summary_of_a_sync_tasks_error_never_its_text(stack: Stack) -> None:
    stack.start_api()
    task_id = "sync-task-with-internals"
    with session_scope() as session:
        session.add(
            TaskRecord(
                task_id=task_id,
                name="sync_embeddings_task",
                queue="sync",
                state="FAILURE",
                kwargs={},
                error="OperationalError: connection to db.internal:5432 failed for user ragcore",
                traceback="Traceback (most recent call last): ...",
            )
        )
    path = f"/api/v1/tasks/status/{task_id}"
    admin, _ = _call(stack, ADMIN_KEY, "GET", path)
    assert "db.internal:5432" in admin.json()["error"]
    response, request_id = _call(stack, SYNC_KEY, "GET", path)
    body = response.json()
    assert body["status"] == "FAILURE" and body["traceback"] is None
    assert body["error"] == (
        "the task failed (OperationalError); an admin key reads the details "
        f"(request id {request_id})"
    )
