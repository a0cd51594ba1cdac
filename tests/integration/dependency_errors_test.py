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
from ragcore.settings import Settings
from ragcore_dev.processes import Deployable, free_port
from ragcore_dev.servers import postgres_database
from ragcore_dev.standins.qdrant import QdrantApp, start_qdrant
from ragcore_dev.standins.server import Running
from tests.support.stack import QUERY_KEY, SYNC_KEY, Stack

COLLECTION = "dependency_errors"


@pytest.fixture(scope="module")
def qdrant() -> Iterator[Running[QdrantApp]]:
    """A Qdrant holding one chunk, so a query reaches the chat service."""
    with start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as running:
        store = VectorStore(Settings(qdrant_url=running.url, qdrant_collection=COLLECTION))
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
