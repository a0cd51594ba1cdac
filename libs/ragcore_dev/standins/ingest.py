"""The Ingest stand-in: SPEC §5's embedding feed over a generated corpus, with test controls.

Every document has a distinct pair of topic words and every chunk an aspect word, so a query such as
"glacier harbor safety" targets one chunk; vectors come from HashingEmbedder, as the query side's
do.

    python -m ragcore_dev.standins.ingest --port 7101 --documents 20 --chunks 5

Control API (no auth, no faults): GET /_control/corpus, POST /_control/reset {documents, chunks,
seed}, GET|PUT|DELETE /_control/documents/{id} (PUT body: {"texts"?, "metadata"?}), and the shared
/_control/faults and /_control/requests of ragcore_dev.standins.server.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import itertools
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from ragcore.clients.embedder import HashingEmbedder
from ragcore_dev.standins.server import (
    App,
    HTTPError,
    Request,
    Response,
    Running,
    json_response,
    run_until_signalled,
    start_in_thread,
)

WORDS = (
    "amber anchor apple arrow atlas aurora badger bamboo banner basalt beacon birch bison bridge "
    "bronze cactus canal canyon cedar cobalt comet copper coral cotton crater crystal delta desert "
    "dolphin dune eagle ember falcon fern fjord forest fossil garnet geyser ginger glacier granite "
    "harbor hazel heron horizon iris island ivory jasmine jungle kestrel lagoon lantern lava lemon "
    "lichen lotus magnet maple marble meadow mesa meteor mint mirror monsoon mosaic nectar nickel "
    "oasis obsidian ocean orchid otter oyster pebble pepper pine plateau prairie quartz quill "
    "raven reef river saffron salmon sapphire savanna sequoia shale sierra silver spruce summit "
    "tundra thistle thunder tidal timber topaz tulip valley velvet violet walnut willow zephyr"
).split()
ASPECTS = (
    "history design costs safety maintenance regulation training outlook suppliers logistics "
    "energy materials testing warranty recycling staffing"
).split()
CATEGORIES = ("science", "finance", "health", "travel")
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
#: The generated corpus starts here; documents changed later take the current time.
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def iso(micros: int) -> str:
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, eq=False)
class Document:
    """One document; its chunks' texts and vectors are made when served, so a corpus of a million
    chunks costs a few hundred bytes per document. Replaced, never mutated: readers need no lock."""

    id: str
    topic: tuple[str, str]
    category: str
    chunks: int
    updated_at: int  # microseconds since the epoch
    revision: int = 0
    #: Texts a test gave (PUT); None: generated from the topic.
    given_texts: tuple[str, ...] | None = None
    extra_metadata: dict[str, Any] | None = None

    def chunk_id(self, index: int) -> str:
        return f"{self.id}/chunk-{index:03d}"

    @property
    def chunk_ids(self) -> tuple[str, ...]:
        return tuple(self.chunk_id(j) for j in range(self.chunks))

    def text(self, index: int) -> str:
        if self.given_texts is not None:
            return self.given_texts[index]
        return chunk_text(self.topic, aspect(index), self.revision)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(self.text(j) for j in range(self.chunks))

    def chunk_metadata(self, index: int) -> dict[str, Any]:
        title = f"{self.topic[0].title()} {self.topic[1].title()}"
        return {
            "title": title,
            "category": self.category,
            "chunk_index": index,
            "lang": "en",
            **(self.extra_metadata or {}),
        }

    @property
    def updated_at_iso(self) -> str:
        return iso(self.updated_at)

    def query(self, index: int = 0) -> str:
        """A query whose best match is chunk `index` of this document."""
        return f"{self.topic[0]} {self.topic[1]} {aspect(index)}"

    def summary(self) -> dict[str, Any]:
        return {
            "document_id": self.id,
            "topic": list(self.topic),
            "category": self.category,
            "chunk_ids": list(self.chunk_ids),
            "texts": list(self.texts),
            "updated_at": self.updated_at_iso,
            "revision": self.revision,
        }


def aspect(index: int) -> str:
    """The word that tells chunk `index` of a document apart from its siblings."""
    word = ASPECTS[index % len(ASPECTS)]
    return word if index < len(ASPECTS) else f"{word}{index // len(ASPECTS)}"


def chunk_text(topic: tuple[str, str], word: str, revision: int) -> str:
    a, b = topic
    return (
        f"{a.title()} and {b}: {word}. "
        f"This part of the {a} {b} dossier covers the {word} of {a} {b} (revision {revision})."
    )


class Corpus:
    """Documents kept in feed order: (updated_at, document_id), then chunk id within a document."""

    def __init__(self, documents: int = 20, chunks: int = 5, seed: int = 0, dim: int = 384) -> None:
        self.embedder = HashingEmbedder(dim)
        self._lock = threading.Lock()
        self.reset(documents, chunks, seed)

    def reset(self, documents: int, chunks: int, seed: int = 0) -> None:
        """Replace everything with `documents` × `chunks` generated chunks."""
        pairs = list(itertools.permutations(WORDS, 2))
        if documents > len(pairs):
            raise ValueError(f"at most {len(pairs)} documents have distinct topics")
        topics = random.Random(seed).sample(pairs, documents)
        base = to_micros(BASE_TIME)
        docs = {}
        for i, topic in enumerate(topics):
            # Pairs of documents share a timestamp, so the feed's tie-break on document_id is
            # exercised.
            doc = self._build(
                f"doc-{i:05d}",
                topic,
                CATEGORIES[i % len(CATEGORIES)],
                chunks,
                base + (i // 2) * 1_000_000,
            )
            docs[doc.id] = doc
        used = set(topics)
        unused = [p for p in pairs if p not in used]
        random.Random(seed + 1).shuffle(unused)
        with self._lock:
            self._docs: dict[str, Document] = docs
            self._chunks = chunks
            self._unused_topics = unused
            self._added = itertools.count(1)
            self._clock = base + len(topics) * 1_000_000
            self._rebuild()

    def _build(
        self,
        doc_id: str,
        topic: tuple[str, str],
        category: str,
        chunks: int,
        updated_at: int,
        revision: int = 0,
        texts: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Document:
        given = tuple(texts) if texts is not None else None
        count = len(given) if given is not None else chunks
        return Document(doc_id, topic, category, count, updated_at, revision, given, metadata)

    def _rebuild(self) -> None:
        docs = sorted(self._docs.values(), key=lambda d: (d.updated_at, d.id))
        self._keys = [(doc.updated_at, doc.id) for doc in docs]
        self._order = docs
        self._chunk_total = sum(doc.chunks for doc in docs)

    def _tick(self) -> int:
        # Strictly after every timestamp already served, even if the wall clock is behind BASE_TIME.
        self._clock = max(time.time_ns() // 1000, self._clock + 1)
        return self._clock

    def documents(self) -> dict[str, Document]:
        """A snapshot of the documents by id."""
        with self._lock:
            return dict(self._docs)

    def chunk_count(self) -> int:
        return self._chunk_total

    def put_document(
        self,
        doc_id: str | None = None,
        texts: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        updated_at: datetime | None = None,
    ) -> Document:
        """Add a document (a fresh topic unless texts are given) or replace one, bumping updated_at.

        An explicit `updated_at` in the past is a change Ingest committed late: a feed already past
        that moment never serves it (only its document event tells of it).
        """
        with self._lock:
            old = self._docs.get(doc_id) if doc_id else None
            if old is not None:
                topic, category, chunks, revision = (
                    old.topic,
                    old.category,
                    len(old.chunk_ids),
                    old.revision + 1,
                )
            else:
                topic = self._unused_topics.pop()
                category, chunks, revision = (
                    CATEGORIES[len(self._docs) % len(CATEGORIES)],
                    self._chunks,
                    0,
                )
                doc_id = doc_id or f"doc-added-{next(self._added):05d}"
            assert doc_id is not None
            at = to_micros(updated_at) if updated_at is not None else self._tick()
            doc = self._build(doc_id, topic, category, chunks, at, revision, texts, metadata)
            self._docs[doc_id] = doc
            self._rebuild()
            return doc

    def delete_document(self, doc_id: str) -> bool:
        """Forget a document; deletions never appear in the feed (SPEC §5)."""
        with self._lock:
            if self._docs.pop(doc_id, None) is None:
                return False
            self._rebuild()
            return True

    def page(
        self, since: int | None, after: tuple[int, str, str] | None, limit: int
    ) -> tuple[list[tuple[Document, int]], tuple[int, str, str] | None]:
        """Up to `limit` rows with updated_at >= since and key > after, and the last key if more
        follow."""
        with self._lock:
            keys, docs = self._keys, self._order
        position, chunk = (0 if since is None else bisect.bisect_left(keys, (since,))), 0
        if after is not None:
            at = bisect.bisect_left(keys, after[:2])
            if at < len(keys) and keys[at] == after[:2]:  # within that document: after its chunk
                at_chunk = bisect.bisect_right(docs[at].chunk_ids, after[2])
                at, at_chunk = (at + 1, 0) if at_chunk >= docs[at].chunks else (at, at_chunk)
            else:
                at_chunk = 0
            if (at, at_chunk) > (position, chunk):
                position, chunk = at, at_chunk
        rows: list[tuple[Document, int]] = []
        while position < len(docs) and len(rows) < limit:
            doc = docs[position]
            take = min(doc.chunks - chunk, limit - len(rows))
            rows.extend((doc, j) for j in range(chunk, chunk + take))
            chunk += take
            if chunk >= doc.chunks:
                position, chunk = position + 1, 0
        later = range(position + 1, len(docs))
        more = position < len(docs) and (
            docs[position].chunks > chunk or any(docs[i].chunks for i in later)
        )
        last = rows[-1] if rows and more else None
        return rows, ((last[0].updated_at, last[0].id, last[0].chunk_id(last[1])) if last else None)


def items_json(rows: list[tuple[Document, int]], embedder: HashingEmbedder) -> list[dict[str, Any]]:
    """Feed items, vectors made now; as float64 they read back equal to HashingEmbedder's floats."""
    if not rows:
        return []
    texts = [doc.text(j) for doc, j in rows]
    matrix = np.asarray(embedder.embed(texts), dtype=np.float64)
    return [
        {
            "id": doc.chunk_id(j),
            "document_id": doc.id,
            "text": texts[k],
            "vector": matrix[k],
            "metadata": doc.chunk_metadata(j),
            "updated_at": doc.updated_at_iso,
        }
        for k, (doc, j) in enumerate(rows)
    ]


def encode_cursor(key: tuple[int, str, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode()


def decode_cursor(cursor: str) -> tuple[int, str, str]:
    try:
        updated_at, doc_id, chunk_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return int(updated_at), str(doc_id), str(chunk_id)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise HTTPError(400, f"invalid cursor: {cursor!r}") from exc


def parse_since(value: str) -> int:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise HTTPError(400, f"since is not ISO 8601: {value!r}") from exc
    if moment.tzinfo is None:
        raise HTTPError(400, f"since needs a timezone: {value!r}")
    return to_micros(moment)


class IngestApp(App):
    name = "ingest"

    def __init__(
        self, corpus: Corpus, token: str | None = None, model: str = "ragcore-hash-384"
    ) -> None:
        super().__init__(token)
        self.corpus = corpus
        self.model = model
        self.route("GET", "/api/v1/embeddings", self.embeddings_feed)
        self.route("GET", "/api/v1/documents/{document_id}/embeddings", self.document_embeddings)
        self.route("POST", "/v1/embeddings", self.embed)
        self.route("GET", "/_control/corpus", self.control_corpus)
        self.route("POST", "/_control/reset", self.control_reset)
        self.route("GET", "/_control/documents/{document_id}", self.control_get_document)
        self.route("PUT", "/_control/documents/{document_id}", self.control_put_document)
        self.route("DELETE", "/_control/documents/{document_id}", self.control_delete_document)

    def embeddings_feed(self, request: Request) -> Response:
        try:
            limit = int(request.query.get("limit") or DEFAULT_LIMIT)
        except ValueError as exc:
            raise HTTPError(400, "limit must be an integer") from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise HTTPError(400, f"limit must be between 1 and {MAX_LIMIT}")
        since = parse_since(request.query["since"]) if request.query.get("since") else None
        after = decode_cursor(request.query["cursor"]) if request.query.get("cursor") else None
        rows, last = self.corpus.page(since, after, limit)
        items = items_json(rows, self.corpus.embedder)
        return json_response({"items": items, "next_cursor": encode_cursor(last) if last else None})

    def document_embeddings(self, request: Request) -> Response:
        doc = self.corpus.documents().get(request.params["document_id"])
        if doc is None:
            raise HTTPError(404, f"document {request.params['document_id']!r} not found")
        rows = [(doc, j) for j in range(doc.chunks)]
        return json_response({"items": items_json(rows, self.corpus.embedder)})

    def embed(self, request: Request) -> Response:
        body = request.json()
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(400, "input must be a string or a list of strings")
        vectors = self.corpus.embedder.embed(texts)
        tokens = sum(len(t.split()) for t in texts)
        return json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)
                ],
                "model": self.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def control_corpus(self, _: Request) -> Response:
        return json_response(
            {"documents": len(self.corpus.documents()), "chunks": self.corpus.chunk_count()}
        )

    def control_reset(self, request: Request) -> Response:
        spec = request.json() or {}
        self.corpus.reset(
            int(spec.get("documents", 20)), int(spec.get("chunks", 5)), int(spec.get("seed", 0))
        )
        self.faults.clear()
        self.log.clear()
        return self.control_corpus(request)

    def control_get_document(self, request: Request) -> Response:
        doc = self.corpus.documents().get(request.params["document_id"])
        if doc is None:
            raise HTTPError(404, "no such document")
        return json_response(doc.summary())

    def control_put_document(self, request: Request) -> Response:
        spec = request.json() or {}
        doc = self.corpus.put_document(
            request.params["document_id"], spec.get("texts"), spec.get("metadata")
        )
        return json_response(doc.summary())

    def control_delete_document(self, request: Request) -> Response:
        if not self.corpus.delete_document(request.params["document_id"]):
            raise HTTPError(404, "no such document")
        return json_response({"deleted": request.params["document_id"]})


def start_ingest(
    documents: int = 20,
    chunks: int = 5,
    seed: int = 0,
    token: str | None = None,
    dim: int = 384,
    port: int = 0,
) -> Running[IngestApp]:
    """Serve a fresh corpus on 127.0.0.1 in a background thread; `.url`, `.app.corpus`,
    `.app.faults`, `.stop()`."""
    return start_in_thread(IngestApp(Corpus(documents, chunks, seed, dim), token), port=port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7101)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args()
    run_until_signalled(
        IngestApp(Corpus(args.documents, args.chunks, args.seed, args.dim), args.token),
        args.host,
        args.port,
    )


if __name__ == "__main__":
    main()
