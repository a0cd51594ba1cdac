"""The Qdrant stand-in answers qdrant-client's REST calls as Qdrant would, and persists its data."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ragcore.clients.transport import is_retryable
from ragcore_dev.processes import deployable_env, free_port, wait_until_up
from ragcore_dev.standins.qdrant import QdrantApp, start_qdrant
from ragcore_dev.standins.server import Running

DIM = 8


@pytest.fixture(scope="module")
def qdrant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running[QdrantApp]]:
    with start_qdrant(tmp_path_factory.mktemp("qdrant")) as running:
        yield running


@pytest.fixture
def client(qdrant: Running[QdrantApp]) -> Iterator[QdrantClient]:
    qdrant.app.faults.clear()
    client = QdrantClient(url=qdrant.url, check_compatibility=False, timeout=5)
    yield client
    client.close()


@pytest.fixture
def collection(client: QdrantClient) -> Iterator[str]:
    """A collection of 40 points: id i has a one-hot vector, doc `d{i % 4}`, metadata.n = i."""
    name = f"c{uuid.uuid4().hex[:8]}"
    client.create_collection(
        name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
    )
    client.upsert(
        name,
        points=[
            models.PointStruct(
                id=i,
                vector=one_hot(i),
                payload={"document_id": f"d{i % 4}", "metadata": {"n": i, "even": i % 2 == 0}},
            )
            for i in range(40)
        ],
    )
    yield name
    client.delete_collection(name)


def one_hot(i: int) -> list[float]:
    return [1.0 if j == i % DIM else 0.0 for j in range(DIM)]


def doc_filter(document_id: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))]
    )


def test_banner_and_health_answer_like_qdrant(qdrant: Running[QdrantApp]) -> None:
    banner = httpx.get(qdrant.url + "/").json()
    assert models.VersionInfo.model_validate(banner).version
    assert httpx.get(qdrant.url + "/readyz").status_code == 200


def test_collection_lifecycle_through_qdrant_client(client: QdrantClient) -> None:
    assert not client.collection_exists("life")
    client.create_collection(
        "life", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT)
    )
    assert client.collection_exists("life")
    with pytest.raises(UnexpectedResponse) as caught:
        client.create_collection(
            "life", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT)
        )
    assert caught.value.status_code == 409
    info = client.get_collection("life")
    assert isinstance(info.config.params.vectors, models.VectorParams)
    assert (info.config.params.vectors.size, info.config.params.vectors.distance) == (
        DIM,
        models.Distance.DOT,
    )
    assert "life" in [c.name for c in client.get_collections().collections]
    assert client.delete_collection("life") is True
    with pytest.raises(UnexpectedResponse) as missing:
        client.get_collection("life")
    assert missing.value.status_code == 404
    assert not is_retryable(missing.value)


def test_payload_index_shows_in_the_schema_with_its_point_count(
    client: QdrantClient, collection: str
) -> None:
    client.create_payload_index(
        collection, "document_id", field_schema=models.PayloadSchemaType.KEYWORD, wait=True
    )
    schema = client.get_collection(collection).payload_schema
    assert schema["document_id"].data_type == models.PayloadSchemaType.KEYWORD
    assert schema["document_id"].points == 40


def test_upsert_as_batch_overwrites_by_id(client: QdrantClient, collection: str) -> None:
    client.upsert(
        collection,
        points=models.Batch(
            ids=[0, 1], vectors=[one_hot(5), one_hot(5)], payloads=[{"x": 1}, {"x": 2}]
        ),
    )
    assert client.count(collection).count == 40
    records, _ = client.scroll(
        collection, scroll_filter=models.Filter(must=[models.HasIdCondition(has_id=[0, 1])])
    )
    assert sorted(r.payload["x"] for r in records) == [1, 2]  # type: ignore[index]


def test_wrong_dimension_is_a_permanent_400_with_qdrants_message(
    client: QdrantClient, collection: str
) -> None:
    with pytest.raises(UnexpectedResponse) as caught:
        client.upsert(collection, points=[models.PointStruct(id=99, vector=[1.0, 2.0], payload={})])
    assert caught.value.status_code == 400
    assert b"Vector dimension error: expected dim: 8, got 2" in caught.value.content
    assert not is_retryable(caught.value)


def test_query_returns_nearest_with_payload_and_honours_filters(
    client: QdrantClient, collection: str
) -> None:
    top = client.query_points(collection, query=one_hot(3), limit=5, with_payload=True).points
    assert {p.id for p in top} == {3, 11, 19, 27, 35}
    assert top[0].score == pytest.approx(1.0)
    assert top[0].payload is not None and top[0].payload["metadata"]["n"] % DIM == 3

    filtered = client.query_points(
        collection, query=one_hot(3), limit=40, query_filter=doc_filter("d3")
    ).points
    assert {p.id for p in filtered} == set(range(3, 40, 4))

    nested = models.Filter(
        must=[models.FieldCondition(key="metadata.n", range=models.Range(gte=10, lt=20))],
        must_not=[models.FieldCondition(key="metadata.even", match=models.MatchValue(value=True))],
        should=[doc_filter("d1"), models.Filter(must=[models.HasIdCondition(has_id=[13])])],
    )
    assert {
        p.id
        for p in client.query_points(
            collection, query=one_hot(0), limit=40, query_filter=nested
        ).points
    } == {13, 17}
    anyof = models.Filter(
        must=[models.FieldCondition(key="document_id", match=models.MatchAny(any=["d0", "d2"]))]
    )
    assert client.count(collection, count_filter=anyof).count == 20


def test_legacy_search_endpoint_answers_a_list(qdrant: Running[QdrantApp], collection: str) -> None:
    body = httpx.post(
        f"{qdrant.url}/collections/{collection}/points/search",
        json={
            "vector": one_hot(2),
            "limit": 3,
            "filter": {"must": [{"key": "document_id", "match": {"value": "d2"}}]},
        },
    ).json()
    assert body["status"] == "ok"
    assert len(body["result"]) == 3
    assert all(p["id"] % DIM == 2 and p["score"] == pytest.approx(1.0) for p in body["result"])


def test_scroll_pages_through_every_id_once(client: QdrantClient, collection: str) -> None:
    seen: list[models.ExtendedPointId] = []
    offset: models.ExtendedPointId | None = None
    pages = 0
    while True:
        points, offset = client.scroll(collection, limit=7, offset=offset, with_payload=False)
        seen += [p.id for p in points]
        pages += 1
        if offset is None:
            break
    assert sorted(seen) == list(range(40))
    assert pages == 6


def test_delete_by_filter_and_by_ids_and_unknown_ids_are_fine(
    client: QdrantClient, collection: str
) -> None:
    client.delete(collection, points_selector=models.FilterSelector(filter=doc_filter("d0")))
    client.delete(collection, points_selector=models.FilterSelector(filter=doc_filter("d0")))
    assert client.count(collection, exact=True).count == 30
    result = client.delete(
        collection, points_selector=models.PointIdsList(points=[1, 5, 12345]), wait=False
    )
    assert result.status == models.UpdateStatus.ACKNOWLEDGED
    assert client.count(collection).count == 28


def test_uuid_ids_round_trip(client: QdrantClient, collection: str) -> None:
    point = str(uuid.uuid5(uuid.NAMESPACE_URL, "chunk"))
    client.upsert(
        collection,
        points=[models.PointStruct(id=point, vector=one_hot(1), payload={"document_id": "u"})],
    )
    [hit] = client.query_points(
        collection, query=one_hot(1), query_filter=doc_filter("u"), limit=1
    ).points
    assert hit.id == point


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_api_key_is_required_when_configured(tmp_path: Path) -> None:
    with start_qdrant(tmp_path, api_key="k") as qdrant:
        with pytest.raises(UnexpectedResponse) as caught:
            QdrantClient(url=qdrant.url, check_compatibility=False).get_collections()
        assert caught.value.status_code == 401
        keyed = QdrantClient(url=qdrant.url, api_key="k", https=False, check_compatibility=False)
        assert keyed.get_collections().collections == []
        keyed.close()


def test_outage_errors_are_retryable(
    qdrant: Running[QdrantApp], client: QdrantClient, collection: str
) -> None:
    qdrant.app.faults.fail(503, times=1)
    with pytest.raises(UnexpectedResponse) as unavailable:
        client.count(collection)
    assert is_retryable(unavailable.value)
    down = QdrantClient(url=f"http://127.0.0.1:{free_port()}", check_compatibility=False)
    with pytest.raises(ResponseHandlingException) as refused:
        down.count(collection)
    assert is_retryable(refused.value)


def test_optimize_builds_the_index_and_search_still_finds_the_same_points(
    qdrant: Running[QdrantApp], client: QdrantClient, collection: str
) -> None:
    before = [p.id for p in client.query_points(collection, query=one_hot(6), limit=5).points]
    response = httpx.post(f"{qdrant.url}/_control/collections/{collection}/optimize", timeout=60)
    assert response.status_code == 200
    assert sorted(
        p.id for p in client.query_points(collection, query=one_hot(6), limit=5).points
    ) == sorted(before)


def test_errors_have_qdrants_shape(qdrant: Running[QdrantApp]) -> None:
    body = httpx.get(qdrant.url + "/collections/nope").json()
    assert body["status"]["error"] == "Not found: Collection `nope` doesn't exist!"
    assert (
        httpx.put(
            qdrant.url + "/collections/bad$name",
            json={"vectors": {"size": 4, "distance": "Cosine"}},
        ).status_code
        == 400
    )


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with start_qdrant(tmp_path) as first:
        client = QdrantClient(url=first.url, check_compatibility=False)
        client.create_collection(
            "keep", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
        )
        client.create_payload_index(
            "keep", "document_id", field_schema=models.PayloadSchemaType.KEYWORD
        )
        client.upsert(
            "keep",
            points=[
                models.PointStruct(id=i, vector=one_hot(i), payload={"document_id": "d"})
                for i in range(10)
            ],
        )
        client.close()
    with start_qdrant(tmp_path) as second:
        client = QdrantClient(url=second.url, check_compatibility=False)
        info = client.get_collection("keep")
        assert info.points_count == 10
        assert "document_id" in info.payload_schema
        assert client.count("keep", count_filter=doc_filter("d")).count == 10
        client.close()


def test_processes_share_one_collection_and_it_survives_sigterm_and_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "ragcore_dev.standins.qdrant",
        "--port",
        str(port),
        "--data",
        str(tmp_path),
    ]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, env=deployable_env())
        wait_until_up(url)
        return process

    def count_in_another_process() -> int:
        code = (
            "from qdrant_client import QdrantClient; "
            f"print(QdrantClient(url={url!r}, check_compatibility=False).count('shared').count)"
        )
        return int(
            subprocess.run(
                [sys.executable, "-c", code],
                env=deployable_env(),
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )

    process = start()
    try:
        client = QdrantClient(url=url, check_compatibility=False)
        client.create_collection(
            "shared", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
        )
        client.upsert(
            "shared",
            points=[models.PointStruct(id=i, vector=one_hot(i), payload={}) for i in range(25)],
        )
        client.close()
        assert count_in_another_process() == 25
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        process = start()
        assert count_in_another_process() == 25
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
