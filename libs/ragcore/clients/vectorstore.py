"""The Qdrant collection of chunks: idempotent writes by deterministic point id, filtered search."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from ragcore.clients.ingest import Chunk
from ragcore.clients.transport import POOL_LIMITS
from ragcore.settings import Settings

# Fixed forever: changing it would orphan every point already written.
POINT_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-5e7a-9c10-2b4d6f8a0c1e")
#: The payload field holding the sync generation a point was written in: a full sync removes the
#: points of every other generation by filter, without listing ids.
GENERATION = "sync_generation"


class CollectionMismatch(RuntimeError):
    """The collection exists but was created with other vector parameters than the settings."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result, in the shape of a query answer's source."""

    document_id: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any]


def point_id(chunk_id: str) -> str:
    """Qdrant ids must be UUIDs or integers; chunk ids are any string, so map them by uuid5."""
    return str(uuid.uuid5(POINT_NAMESPACE, chunk_id))


def _filter(filters: dict[str, Any] | None) -> models.Filter | None:
    if not filters:
        return None
    return models.Filter(
        must=[
            models.FieldCondition(
                key=field if field == "document_id" else f"metadata.{field}",
                match=models.MatchValue(value=value),
            )
            for field, value in filters.items()
        ]
    )


def _document_filter(document_id: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))]
    )


def _other_generations(generation: int) -> models.Filter:
    # must_not also selects points with no generation at all (written before generations existed).
    same = models.FieldCondition(key=GENERATION, match=models.MatchValue(value=generation))
    return models.Filter(must_not=[same])


class VectorStore:
    """One collection, sized and measured as the settings say."""

    def __init__(self, settings: Settings, client: QdrantClient | None = None) -> None:
        self.collection = settings.qdrant.collection
        self.vector_size = settings.qdrant.vector_size
        self.distance = models.Distance(settings.qdrant.distance)
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif settings.qdrant.url:
            # The server's version banner is not needed, and a stand-in need not serve the exact
            # version. Explicit limits: for a 127.0.0.1 URL the client would otherwise open a
            # connection per call.
            self.client = QdrantClient(
                url=settings.qdrant.url,
                api_key=settings.qdrant.api_key,
                timeout=math.ceil(settings.neighbours.http_timeout_seconds),
                check_compatibility=False,
                limits=POOL_LIMITS,
            )
        else:
            self.client = QdrantClient(path=settings.qdrant.path)
        self._ready = False

    point_id = staticmethod(point_id)

    def close(self) -> None:
        """Close the client if this store built it (local mode holds a lock on its folder)."""
        if self._owns_client:
            self.client.close()

    def ensure_collection(self) -> None:
        """Create the collection and its `document_id` index if missing; refuse one of another
        shape."""
        if self._ready:
            return
        if not self.client.collection_exists(self.collection):
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(
                        size=self.vector_size, distance=self.distance
                    ),
                )
            except (UnexpectedResponse, ValueError):
                # Another process may have created it between our check and our create; else
                # re-raise.
                if not self.client.collection_exists(self.collection):
                    raise
        info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise CollectionMismatch(
                f"collection {self.collection!r} has named vectors; "
                "ragcore expects one unnamed vector"
            )
        if vectors.size != self.vector_size or vectors.distance != self.distance:
            raise CollectionMismatch(
                f"collection {self.collection!r} holds {vectors.size}-dim "
                f"{vectors.distance.value} vectors, but the settings say {self.vector_size}-dim "
                f"{self.distance.value}: re-create it or fix RAGCORE_VECTOR_SIZE/RAGCORE_DISTANCE"
            )
        options = self.client.init_options
        # Local mode has no payload indexes (and warns if asked); a server filters deletions by this
        # one.
        local = options.get("path") is not None or options.get("location") == ":memory:"
        indexes = {
            "document_id": models.PayloadSchemaType.KEYWORD,
            GENERATION: models.PayloadSchemaType.INTEGER,
        }
        for field, schema in indexes.items():
            if not local and field not in info.payload_schema:
                self.client.create_payload_index(
                    self.collection, field, field_schema=schema, wait=True
                )
        self._ready = True

    def _check_vector(self, vector: list[float], what: str) -> None:
        if len(vector) != self.vector_size:
            raise ValueError(
                f"{what} has {len(vector)} dimensions, "
                f"the collection {self.collection!r} holds {self.vector_size}"
            )

    def upsert(self, chunks: Iterable[Chunk], wait: bool = True, generation: int = 0) -> int:
        """Write chunks under their deterministic ids (a re-upsert overwrites), tagged with the sync
        `generation`; return how many."""
        ids: list[models.ExtendedPointId] = []
        vectors: list[list[float]] = []
        payloads: list[dict[str, Any]] = []
        for chunk in chunks:
            self._check_vector(chunk.vector, f"chunk {chunk.id!r}")
            ids.append(point_id(chunk.id))
            vectors.append(chunk.vector)
            payloads.append(
                {
                    "document_id": chunk.document_id,
                    "chunk_id": chunk.id,
                    "text": chunk.text,
                    "metadata": chunk.metadata,
                    "updated_at": chunk.updated_at.isoformat(),
                    GENERATION: generation,
                }
            )
        if not ids:
            return 0
        # model_construct skips pydantic's per-float validation, the client's main cost; shapes are
        # checked above.
        batch = models.Batch.model_construct(ids=ids, vectors=vectors, payloads=payloads)
        self.client.upsert(self.collection, points=batch, wait=wait)
        return len(ids)

    def delete_document(self, document_id: str) -> None:
        """Remove every point of one document; a document with no points is not an error."""
        self.client.delete(
            self.collection,
            points_selector=models.FilterSelector(filter=_document_filter(document_id)),
        )

    def replace_document(self, document_id: str, chunks: list[Chunk], generation: int = 0) -> None:
        """Make the document's points exactly `chunks`: write them first, then remove the ones not
        rewritten, so a search in between finds the old or the new version, never neither."""
        self.upsert(chunks, wait=True, generation=generation)
        kept: list[models.ExtendedPointId] = [point_id(c.id) for c in chunks]
        stale = _document_filter(document_id)
        if kept:
            stale.must_not = [models.HasIdCondition(has_id=kept)]
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=stale))

    def set_generation(self, ids: Iterable[str], generation: int) -> None:
        """Re-tag existing points with `generation`; ids no longer present are ignored."""
        points: list[models.ExtendedPointId] = list(ids)
        if points:
            # By filter, not by id list: a point deleted meanwhile is skipped, not an error.
            only = models.Filter(must=[models.HasIdCondition(has_id=points)])
            selector = models.FilterSelector(filter=only)
            payload = {GENERATION: generation}
            self.client.set_payload(self.collection, payload, points=selector, wait=True)

    def count_other_generations(self, generation: int) -> int:
        """How many points were written in another generation than `generation` (or in none)."""
        others = _other_generations(generation)
        return self.client.count(self.collection, count_filter=others, exact=True).count

    def delete_other_generations(self, generation: int) -> None:
        """Remove every point not written in `generation`, by filter (no ids held in memory)."""
        selector = models.FilterSelector(filter=_other_generations(generation))
        self.client.delete(self.collection, points_selector=selector, wait=True)

    def delete_points(self, ids: Iterable[str]) -> None:
        """Remove points by id; unknown ids are ignored."""
        points: list[models.ExtendedPointId] = list(ids)
        if points:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=points))

    def search(
        self, vector: list[float], top_k: int, filters: dict[str, Any] | None = None
    ) -> list[Hit]:
        """Nearest chunks; `filters` maps a metadata field (or `document_id`) to the exact value it
        must hold."""
        self._check_vector(vector, "the query vector")
        response = self.client.query_points(
            self.collection,
            query=vector,
            limit=top_k,
            query_filter=_filter(filters),
            with_payload=True,
        )
        hits = []
        for point in response.points:
            payload = point.payload or {}
            hits.append(
                Hit(
                    document_id=payload.get("document_id", ""),
                    chunk_id=payload.get("chunk_id", ""),
                    score=point.score,
                    text=payload.get("text", ""),
                    metadata=payload.get("metadata") or {},
                )
            )
        return hits

    def count(self) -> int:
        """Exact number of points."""
        return self.client.count(self.collection, exact=True).count

    def iter_point_ids(self, page_size: int = 1000) -> Iterator[str]:
        """Every point id, by scroll, without payloads or vectors."""
        offset: models.ExtendedPointId | None = None
        while True:
            points, offset = self.client.scroll(
                self.collection,
                limit=page_size,
                offset=offset,
                with_payload=False,
                with_vectors=False,
            )
            for point in points:
                yield str(point.id)
            if offset is None:
                return
