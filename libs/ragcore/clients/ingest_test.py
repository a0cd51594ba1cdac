"""IngestClient and the shared HTTP helpers, against the Ingest stand-in over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
import redis

from ragcore.clients.breaker import Breaker, BreakerOpen
from ragcore.clients.embedder import HashingEmbedder
from ragcore.clients.ingest import DocumentNotFound, IngestClient, format_timestamp
from ragcore.clients.transport import is_retryable, make_http_client, shared_http_client
from ragcore.settings import NeighbourSettings
from ragcore_dev.processes import free_port
from ragcore_dev.servers import redis_server
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.server import Running

TOKEN = "ingest-secret"


@pytest.fixture(scope="module")
def ingest() -> Iterator[Running[IngestApp]]:
    with start_ingest(documents=40, chunks=5, seed=11, token=TOKEN) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(ingest: Running[IngestApp]) -> Iterator[None]:
    ingest.app.corpus.reset(40, 5, seed=11)
    ingest.app.faults.clear()
    ingest.app.log.clear()
    yield
    ingest.app.faults.clear()


@pytest.fixture
def client(ingest: Running[IngestApp]) -> Iterator[IngestClient]:
    with make_http_client(NeighbourSettings(http_timeout_seconds=2)) as http:
        yield IngestClient(http, ingest.url, TOKEN)


def test_iter_pages_follows_cursors_across_many_pages_and_yields_each_chunk_once(
    ingest: Running[IngestApp], client: IngestClient
) -> None:
    pages = list(client.iter_pages(limit=7))
    chunks = [c for p in pages for c in p.items]
    assert len(pages) == 29  # 200 chunks / 7
    assert [p.next_cursor is None for p in pages] == [False] * 28 + [True]
    assert len({c.id for c in chunks}) == 200
    assert [(c.updated_at, c.document_id, c.id) for c in chunks] == sorted(
        (c.updated_at, c.document_id, c.id) for c in chunks
    )
    assert len(ingest.app.log.entries("/api/v1/embeddings")) == 29


def test_chunks_are_parsed_with_aware_timestamps_and_exact_vectors(client: IngestClient) -> None:
    chunk = next(client.iter_pages(limit=1)).items[0]
    assert chunk.updated_at.tzinfo is not None
    assert chunk.vector == HashingEmbedder(384).embed([chunk.text])[0]
    assert chunk.metadata["category"] in {"science", "finance", "health", "travel"}


def test_since_is_inclusive_and_sent_as_utc_with_z(
    ingest: Running[IngestApp], client: IngestClient
) -> None:
    everything = [c for p in client.iter_pages(limit=500) for c in p.items]
    pivot = everything[57].updated_at
    tehran = pivot.astimezone(timezone(timedelta(hours=3, minutes=30)))
    ingest.app.log.clear()
    since = [c for p in client.iter_pages(since=tehran, limit=11) for c in p.items]
    assert [c.id for c in since] == [c.id for c in everything if c.updated_at >= pivot]
    assert since[0].updated_at == pivot  # inclusive: the chunks at exactly `since` come back
    sent = ingest.app.log.entries("/api/v1/embeddings")[0]["query"]["since"]
    assert sent.endswith("Z") and datetime.fromisoformat(sent) == pivot


def test_a_since_without_timezone_is_refused_before_any_request(
    ingest: Running[IngestApp], client: IngestClient
) -> None:
    with pytest.raises(ValueError, match="timezone"):
        next(client.iter_pages(since=datetime(2024, 1, 1)))
    assert ingest.app.log.count == 0
    assert format_timestamp(datetime(2024, 1, 1, 12, tzinfo=UTC)) == "2024-01-01T12:00:00Z"


def test_bearer_token_is_sent_and_a_wrong_one_is_a_permanent_401(
    ingest: Running[IngestApp],
) -> None:
    with httpx.Client(timeout=2) as http, pytest.raises(httpx.HTTPStatusError) as caught:
        next(IngestClient(http, ingest.url, "wrong").iter_pages())
    assert caught.value.response.status_code == 401
    assert not is_retryable(caught.value)


def test_document_embeddings_returns_all_chunks_of_the_document(
    ingest: Running[IngestApp], client: IngestClient
) -> None:
    doc = next(iter(ingest.app.corpus.documents().values()))
    chunks = client.document_embeddings(doc.id)
    assert [c.id for c in chunks] == list(doc.chunk_ids)
    assert {c.document_id for c in chunks} == {doc.id}


def test_unknown_document_raises_document_not_found_which_is_not_retryable(
    ingest: Running[IngestApp], client: IngestClient
) -> None:
    with pytest.raises(DocumentNotFound) as caught:
        client.document_embeddings("no such/doc?x=1")
    assert caught.value.document_id == "no such/doc?x=1"
    assert not is_retryable(caught.value)
    assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)
    assert not is_retryable(caught.value.__cause__)
    # The id travels as one escaped path segment.
    assert (
        ingest.app.log.entries()[-1]["path"]
        == "/api/v1/documents/no%20such%2Fdoc%3Fx%3D1/embeddings"
    )


def test_a_500_mid_feed_is_retryable_and_a_retry_resumes(
    ingest: Running[IngestApp], client: IngestClient
) -> None:
    pages = client.iter_pages(limit=50)
    first = next(pages)
    ingest.app.faults.fail(500, times=1)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        next(pages)
    assert caught.value.response.status_code == 500
    assert is_retryable(caught.value)
    # Resuming from the last timestamp seen (inclusive) loses nothing.
    rest = [
        c for p in client.iter_pages(since=first.items[-1].updated_at, limit=50) for c in p.items
    ]
    all_ids = {cid for doc in ingest.app.corpus.documents().values() for cid in doc.chunk_ids}
    assert {c.id for c in first.items} | {c.id for c in rest} == all_ids


def test_a_timeout_is_retryable(ingest: Running[IngestApp]) -> None:
    ingest.app.faults.hang(times=1)
    with (
        make_http_client(NeighbourSettings(http_timeout_seconds=0.3)) as http,
        pytest.raises(httpx.ReadTimeout) as caught,
    ):
        next(IngestClient(http, ingest.url, TOKEN).iter_pages())
    assert is_retryable(caught.value)


def test_connection_refused_is_retryable() -> None:
    with (
        make_http_client(NeighbourSettings(http_timeout_seconds=1)) as http,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        next(IngestClient(http, f"http://127.0.0.1:{free_port()}").iter_pages())
    assert is_retryable(caught.value)


def test_non_http_errors_are_not_retryable() -> None:
    assert not is_retryable(ValueError("bad argument"))
    assert not is_retryable(httpx.UnsupportedProtocol("ftp://"))


def test_http_client_has_the_configured_timeout() -> None:
    with make_http_client(NeighbourSettings(http_timeout_seconds=3.5)) as http:
        assert http.timeout.read == http.timeout.connect == 3.5


def test_shared_http_client_is_reused_in_a_process_and_rebuilt_after_fork() -> None:
    settings = NeighbourSettings()
    parent = shared_http_client(settings)
    assert shared_http_client(settings) is parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's client (and its sockets) must not be handed out here
        os.write(write, b"1" if shared_http_client(settings) is not parent else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.close(write)


def test_behind_its_open_breaker_ingest_gets_no_request_and_the_failure_is_retryable(
    ingest: Running[IngestApp],
) -> None:
    with (
        redis_server() as server,
        make_http_client(NeighbourSettings(http_timeout_seconds=2)) as http,
    ):
        settings = NeighbourSettings(breaker_fail_max=2, breaker_probe_seconds=60)
        client = IngestClient(
            http, ingest.url, TOKEN, Breaker("ingest", redis.Redis.from_url(server.url), settings)
        )
        ingest.app.faults.fail(503, times=2, path="/api/v1/embeddings")
        for _ in range(2):
            with pytest.raises(httpx.HTTPStatusError):
                next(client.iter_pages())
        with pytest.raises(BreakerOpen) as caught:
            next(client.iter_pages())
    assert is_retryable(caught.value)  # a sync task retries later, as for a 5xx
    assert len(ingest.app.log.entries("/api/v1/embeddings")) == 2
