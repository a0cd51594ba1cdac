"""The Ingest stand-in keeps SPEC §5's contract, and its controls do what tests rely on."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import pytest

from ragcore.clients.embedder import HashingEmbedder
from ragcore_dev.processes import deployable_env, free_port, wait_until_up
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.server import Running


@pytest.fixture(scope="module")
def ingest() -> Iterator[Running[IngestApp]]:
    with start_ingest(documents=30, chunks=4, seed=7) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(ingest: Running[IngestApp]) -> Iterator[None]:
    ingest.app.corpus.reset(30, 4, seed=7)
    ingest.app.faults.clear()
    ingest.app.log.clear()
    yield
    ingest.app.faults.clear()


@pytest.fixture
def http(ingest: Running[IngestApp]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest.url, timeout=5) as client:
        yield client


def feed(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every item of the feed, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = http.get("/api/v1/embeddings", params=query).raise_for_status().json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def order_key(item: dict[str, Any]) -> tuple[datetime, str, str]:
    return datetime.fromisoformat(item["updated_at"]), item["document_id"], item["id"]


def test_feed_serves_every_chunk_once_in_updated_at_document_id_order(http: httpx.Client) -> None:
    items = feed(http, limit=7)
    assert len(items) == 120
    assert len({i["id"] for i in items}) == 120
    assert [order_key(i) for i in items] == sorted(order_key(i) for i in items)
    # Documents share timestamps in pairs: the tie-break on document_id is really exercised.
    assert len({i["updated_at"] for i in items}) == 15


def test_last_page_has_null_cursor_even_when_it_is_exactly_full(http: httpx.Client) -> None:
    body = http.get("/api/v1/embeddings", params={"limit": 60}).json()
    second = http.get(
        "/api/v1/embeddings", params={"limit": 60, "cursor": body["next_cursor"]}
    ).json()
    assert len(second["items"]) == 60
    assert second["next_cursor"] is None


def test_limit_defaults_to_100_and_refuses_more_than_500(http: httpx.Client) -> None:
    assert len(http.get("/api/v1/embeddings").json()["items"]) == 100
    assert http.get("/api/v1/embeddings", params={"limit": 501}).status_code == 400
    assert http.get("/api/v1/embeddings", params={"limit": 0}).status_code == 400


def test_since_is_inclusive_and_accepts_z_and_offsets(http: httpx.Client) -> None:
    items = feed(http, limit=500)
    pivot = items[41]["updated_at"]
    expected = [
        i["id"]
        for i in items
        if datetime.fromisoformat(i["updated_at"]) >= datetime.fromisoformat(pivot)
    ]
    assert pivot.endswith("Z")
    assert [i["id"] for i in feed(http, since=pivot, limit=9)] == expected
    as_offset = (
        datetime.fromisoformat(pivot)
        .astimezone(timezone(timedelta(hours=3, minutes=30)))
        .isoformat()
    )
    assert [i["id"] for i in feed(http, since=as_offset)] == expected


def test_since_without_timezone_or_malformed_cursor_is_a_400(http: httpx.Client) -> None:
    assert (
        http.get("/api/v1/embeddings", params={"since": "2024-01-01T00:00:00"}).status_code == 400
    )
    assert http.get("/api/v1/embeddings", params={"cursor": "not-a-cursor"}).status_code == 400


def test_vectors_are_hashing_embedder_vectors_of_the_text(http: httpx.Client) -> None:
    embedder = HashingEmbedder(384)
    for item in http.get("/api/v1/embeddings", params={"limit": 10}).json()["items"]:
        assert item["vector"] == embedder.embed([item["text"]])[0]


def test_a_documents_query_retrieves_its_chunk_first(
    ingest: Running[IngestApp], http: httpx.Client
) -> None:
    items = feed(http, limit=500)
    matrix = np.array([i["vector"] for i in items])
    embedder = HashingEmbedder(384)
    for doc in list(ingest.app.corpus.documents().values())[:10]:
        for index in range(4):
            best = int(np.argmax(matrix @ np.array(embedder.embed([doc.query(index)])[0])))
            assert items[best]["id"] == doc.chunk_ids[index]


def test_changed_document_moves_to_the_end_of_the_feed_with_a_later_timestamp(
    ingest: Running[IngestApp], http: httpx.Client
) -> None:
    before = feed(http, limit=500)
    doc_id = before[0]["document_id"]
    changed = http.put(f"/_control/documents/{doc_id}", json={}).json()
    after = feed(http, limit=500)
    assert [i["document_id"] for i in after[-4:]] == [doc_id] * 4
    assert after[-1]["updated_at"] == changed["updated_at"] > before[-1]["updated_at"]
    assert after[-1]["text"] != [i for i in before if i["id"] == after[-1]["id"]][0]["text"]
    assert [i["id"] for i in feed(http, since=changed["updated_at"])] == list(changed["chunk_ids"])


def test_document_endpoint_serves_all_chunks_and_404_for_unknown_or_deleted(
    ingest: Running[IngestApp], http: httpx.Client
) -> None:
    doc = next(iter(ingest.app.corpus.documents().values()))
    body = http.get(f"/api/v1/documents/{doc.id}/embeddings").json()
    assert [i["id"] for i in body["items"]] == list(doc.chunk_ids)
    assert http.get("/api/v1/documents/nope/embeddings").status_code == 404
    assert http.delete(f"/_control/documents/{doc.id}").status_code == 200
    assert http.get(f"/api/v1/documents/{doc.id}/embeddings").status_code == 404
    assert doc.id not in {i["document_id"] for i in feed(http, limit=500)}


def test_added_document_appears_with_given_texts(http: httpx.Client) -> None:
    added = http.put(
        "/_control/documents/new-doc", json={"texts": ["alpha", "beta"], "metadata": {"lang": "fa"}}
    ).json()
    items = http.get("/api/v1/documents/new-doc/embeddings").json()["items"]
    assert [i["text"] for i in items] == ["alpha", "beta"]
    assert items[0]["metadata"]["lang"] == "fa"
    assert http.get("/_control/corpus").json() == {"documents": 31, "chunks": 122}
    assert added["chunk_ids"] == [i["id"] for i in items]


def test_openai_embeddings_endpoint_matches_hashing_embedder(http: httpx.Client) -> None:
    body = http.post(
        "/v1/embeddings", json={"model": "ragcore-hash-384", "input": ["glacier harbor", "x"]}
    ).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["embedding"] == HashingEmbedder(384).embed(["glacier harbor"])[0]
    single = http.post("/v1/embeddings", json={"model": "m", "input": "glacier harbor"}).json()
    assert single["data"][0]["embedding"] == body["data"][0]["embedding"]
    assert http.post("/v1/embeddings", json={"input": 3}).status_code == 400


def test_bearer_token_is_required_when_configured() -> None:
    with start_ingest(documents=2, chunks=1, token="secret") as ingest:
        assert httpx.get(ingest.url + "/api/v1/embeddings").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(ingest.url + "/api/v1/embeddings", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer secret"}
        assert len(httpx.get(ingest.url + "/api/v1/embeddings", headers=right).json()["items"]) == 2


def test_next_k_requests_fail_with_the_injected_status_then_recover(http: httpx.Client) -> None:
    assert http.post("/_control/faults", json={"status": 500, "times": 2}).status_code == 200
    statuses = [http.get("/api/v1/embeddings").status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    log = http.get("/_control/requests").json()
    assert log["count"] == 3
    assert [r["status"] for r in log["requests"]] == [500, 500, 200]


def test_faults_can_target_one_path(ingest: Running[IngestApp], http: httpx.Client) -> None:
    ingest.app.faults.fail(503, times=1, path="/api/v1/documents/")
    assert http.get("/api/v1/embeddings").status_code == 200
    assert http.get("/api/v1/documents/doc-00000/embeddings").status_code == 503
    assert http.get("/api/v1/documents/doc-00000/embeddings").status_code == 200


def test_delay_slows_every_request(ingest: Running[IngestApp], http: httpx.Client) -> None:
    http.post("/_control/faults", json={"delay_ms": 300})
    started = time.perf_counter()
    http.get("/api/v1/embeddings", params={"limit": 1})
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    http.get("/_control/corpus")  # control calls are never delayed
    assert time.perf_counter() - started < 0.3


def test_hang_makes_the_client_time_out_until_cleared(ingest: Running[IngestApp]) -> None:
    ingest.app.faults.hang(times=1)
    with httpx.Client(base_url=ingest.url, timeout=5) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get("/api/v1/embeddings", timeout=0.5)
        assert client.get("/api/v1/embeddings").status_code == 200
    ingest.app.faults.clear()  # releases the hung handler thread
    assert [r["status"] for r in ingest.app.log.entries()] == [None, 200]


def test_stop_ends_idle_and_hanging_connections_and_leaves_no_threads() -> None:
    running = start_ingest(documents=2, chunks=1)
    idle = httpx.Client(base_url=running.url)
    idle.get("/api/v1/embeddings")  # a pooled keep-alive connection stays open
    running.app.faults.hang(times=1)
    outcome: list[BaseException] = []

    def wait_for_answer() -> None:
        try:
            httpx.get(running.url + "/api/v1/embeddings", timeout=30)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    hung = threading.Thread(target=wait_for_answer)
    hung.start()
    deadline = time.monotonic() + 10
    # the hanging request has arrived
    while running.app.log.count < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    running.stop()
    assert time.perf_counter() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith(running.server.name)]
    hung.join(timeout=5)
    assert isinstance(outcome[0], httpx.RemoteProtocolError)  # cut off, not left waiting 30 s
    idle.close()


def test_runs_as_a_process_and_exits_cleanly_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragcore_dev.standins.ingest",
            "--port",
            str(port),
            "--documents",
            "3",
            "--chunks",
            "2",
        ],
        env=deployable_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}")
        assert len(httpx.get(f"http://127.0.0.1:{port}/api/v1/embeddings").json()["items"]) == 6
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert (
            process.stdout is not None
            and f"listening on http://127.0.0.1:{port}" in process.stdout.read()
        )
    finally:
        process.kill()
        process.wait()
