"""VectorStore behaves the same over the Qdrant stand-in (REST) and qdrant-client's local mode."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from ragcore.clients.embedder import HashingEmbedder
from ragcore.clients.ingest import Chunk, IngestClient
from ragcore.clients.vectorstore import CollectionMismatch, VectorStore, point_id
from ragcore.settings import QdrantSettings, Settings
from ragcore_dev.standins.ingest import Document, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant

EMBEDDER = HashingEmbedder(384)


@pytest.fixture(scope="module")
def corpus() -> Iterator[tuple[list[Chunk], dict[str, Document]]]:
    """96 chunks as IngestClient reads them from the stand-in, and the documents they came from."""
    with start_ingest(documents=24, chunks=4, seed=3) as ingest, httpx.Client(timeout=10) as http:
        chunks = [
            c for page in IngestClient(http, ingest.url).iter_pages(limit=500) for c in page.items
        ]
        yield chunks, ingest.app.corpus.documents()


@pytest.fixture(scope="module")
def qdrant_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_qdrant(tmp_path_factory.mktemp("qdrant")) as qdrant:
        yield qdrant.url


@pytest.fixture(params=["standin", "local"])
def settings(request: pytest.FixtureRequest, qdrant_url: str, tmp_path: Path) -> Settings:
    collection = f"chunks_{uuid.uuid4().hex[:8]}"
    if request.param == "standin":
        return Settings(qdrant=QdrantSettings(url=qdrant_url, collection=collection))
    return Settings(
        qdrant=QdrantSettings(url=None, path=str(tmp_path / "local"), collection=collection)
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[VectorStore]:
    store = VectorStore(settings)
    store.ensure_collection()
    yield store
    store.close()


@pytest.fixture
def filled(store: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]) -> VectorStore:
    assert store.upsert(corpus[0]) == 96
    return store


def test_point_id_is_a_stable_uuid5_of_the_chunk_id() -> None:
    first = point_id("doc-1/chunk-000")
    assert first == point_id("doc-1/chunk-000") == VectorStore.point_id("doc-1/chunk-000")
    assert uuid.UUID(first).version == 5
    assert point_id("doc-1/chunk-001") != first
    # Fixed forever: a changed namespace would orphan every point already written.
    assert first == "4cb38acf-172a-5a71-98b6-12b94ccac0f2"


def test_ensure_collection_twice_is_fine_and_a_server_indexes_document_id(
    store: VectorStore, settings: Settings
) -> None:
    again = VectorStore(settings, client=store.client)
    again.ensure_collection()
    if settings.qdrant.url:
        schema = store.client.get_collection(store.collection).payload_schema
        assert schema["document_id"].data_type.value == "keyword"


def test_a_collection_of_another_vector_size_is_refused_clearly(
    store: VectorStore, settings: Settings
) -> None:
    other = VectorStore(
        settings.model_copy(
            update={"qdrant": settings.qdrant.model_copy(update={"vector_size": 8})}
        ),
        client=store.client,
    )
    with pytest.raises(
        CollectionMismatch, match="holds 384-dim Cosine vectors, but the settings say 8-dim"
    ):
        other.ensure_collection()


def test_reupserting_the_same_chunks_does_not_duplicate(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    assert filled.count() == 96
    edited = replace(corpus[0][0], text="edited text")
    filled.upsert(corpus[0][:10] + [edited])
    assert filled.count() == 96
    [hit] = filled.search(edited.vector, 1, {"document_id": edited.document_id, "chunk_index": 0})
    assert hit.text == "edited text"


def test_search_returns_the_chunk_a_query_targets(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    for doc in list(corpus[1].values())[:8]:
        for index in range(4):
            hits = filled.search(EMBEDDER.embed([doc.query(index)])[0], 3)
            assert hits[0].chunk_id == doc.chunk_ids[index]
            assert hits[0].document_id == doc.id
            assert hits[0].text == doc.texts[index]
            assert hits[0].metadata["chunk_index"] == index
            assert hits[0].score > hits[1].score


def test_filters_match_metadata_fields_and_document_id(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    doc = next(d for d in corpus[1].values() if d.category == "science")
    query = EMBEDDER.embed([doc.query(1)])[0]

    finance = filled.search(query, 50, {"category": "finance"})
    assert finance and all(h.metadata["category"] == "finance" for h in finance)
    assert len(finance) == 24  # 6 finance documents × 4 chunks

    own = filled.search(query, 50, {"document_id": doc.id})
    assert [h.chunk_id for h in own][:1] == [doc.chunk_ids[1]]
    assert {h.document_id for h in own} == {doc.id} and len(own) == 4

    both = filled.search(query, 50, {"category": "science", "chunk_index": 3})
    assert len(both) == 6 and all(h.metadata["chunk_index"] == 3 for h in both)
    assert filled.search(query, 5, {"category": "no-such-category"}) == []


def test_delete_document_removes_only_its_points_and_twice_is_fine(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    doc = next(iter(corpus[1].values()))
    filled.delete_document(doc.id)
    filled.delete_document(doc.id)
    filled.delete_document("never-existed")
    assert filled.count() == 92
    assert filled.search(EMBEDDER.embed([doc.query(0)])[0], 10, {"document_id": doc.id}) == []


def test_replace_document_leaves_exactly_the_new_chunks_and_touches_no_other_document(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    chunks = corpus[0]
    doc_id = chunks[0].document_id
    old = [c for c in chunks if c.document_id == doc_id]
    # 4 chunks become 2
    new = [
        replace(old[0], text="rewritten"),
        replace(old[1], id=f"{doc_id}/new-chunk"),
    ]
    filled.replace_document(doc_id, new)
    own = filled.search(new[0].vector, 10, {"document_id": doc_id})
    assert sorted(h.chunk_id for h in own) == sorted(c.id for c in new)
    assert next(h.text for h in own if h.chunk_id == old[0].id) == "rewritten"
    assert filled.count() == 96 - 4 + 2
    filled.replace_document(doc_id, [])
    assert filled.search(new[0].vector, 10, {"document_id": doc_id}) == [] and filled.count() == 92


def test_iter_point_ids_lists_every_point_across_scroll_pages(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    ids = list(filled.iter_point_ids(page_size=10))
    assert len(ids) == 96
    assert set(ids) == {point_id(c.id) for c in corpus[0]}


def test_delete_points_removes_exactly_those_ids(
    filled: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    gone = [point_id(c.id) for c in corpus[0][:5]]
    filled.delete_points(gone)
    filled.delete_points([])
    assert filled.count() == 91
    assert not set(gone) & set(filled.iter_point_ids())


def test_points_of_other_generations_are_counted_and_removed_by_filter(
    store: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    chunks = corpus[0]
    store.upsert(chunks[:10])  # generation 0: before any full sync
    store.upsert(chunks[10:40], generation=7)
    store.upsert(chunks[40:60], generation=8)
    store.set_generation([point_id(c.id) for c in chunks[40:50]] + [point_id("never-written")], 7)
    assert store.count_other_generations(7) == 10 + 10
    store.delete_other_generations(7)
    assert set(store.iter_point_ids()) == {point_id(c.id) for c in chunks[10:50]}
    store.delete_other_generations(7)  # nothing left to remove is not an error
    assert store.count() == 40 and store.count_other_generations(7) == 0


def test_wrong_vector_size_is_refused_before_anything_is_written(
    store: VectorStore, corpus: tuple[list[Chunk], dict[str, Document]]
) -> None:
    short = replace(corpus[0][5], vector=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="has 3 dimensions, the collection .* holds 384"):
        store.upsert([corpus[0][0], short])
    assert store.count() == 0
    with pytest.raises(ValueError, match="query vector has 2 dimensions"):
        store.search([1.0, 0.0], 5)


def test_upserting_nothing_writes_nothing(store: VectorStore) -> None:
    assert store.upsert([]) == 0
    assert store.count() == 0
