"""What the benchmarks share: percentiles, and the Ingest stand-in's corpus written into Qdrant."""

from __future__ import annotations

from ragcore.clients.ingest import Chunk
from ragcore.clients.vectorstore import VectorStore
from ragcore_dev.standins.ingest import Corpus, from_micros


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def load_corpus(store: VectorStore, corpus: Corpus) -> int:
    """Upsert every chunk of `corpus` (the vectors the Ingest stand-in serves) into `store`."""
    chunks = []
    for doc in corpus.documents().values():
        vectors = corpus.embedder.embed(list(doc.texts))
        at = from_micros(doc.updated_at)
        chunks += [
            Chunk(doc.chunk_id(j), doc.id, doc.text(j), vectors[j], doc.chunk_metadata(j), at)
            for j in range(doc.chunks)
        ]
    store.ensure_collection()
    return store.upsert(chunks)
