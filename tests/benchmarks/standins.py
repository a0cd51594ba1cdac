"""Benchmark: Ingest feed → VectorStore → Qdrant stand-in, each against the bare engine in the same
run.

    python -m tests.benchmarks.standins --documents 10000 --chunks 5

Both stand-ins run as separate processes, as in a deployment. Baselines: the Ingest stand-in's own
page building and serialisation (no HTTP, no client), and qdrant_edge driven directly in this
process with the same points (no HTTP, no qdrant-client).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import qdrant_edge as qe

from ragcore.clients.embedder import HashingEmbedder
from ragcore.clients.ingest import Chunk, IngestClient
from ragcore.clients.vectorstore import VectorStore, point_id
from ragcore.settings import QdrantSettings, Settings
from ragcore_dev.processes import deployable_env, free_port, wait_until_up
from ragcore_dev.standins.ingest import Corpus, aspect, items_json

PAGE = 500
BATCH = 256


@contextmanager
def standin(module: str, *args: str) -> Iterator[str]:
    """Run `python -m ragcore_dev.standins.<module>` on a free port; yield its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", f"ragcore_dev.standins.{module}", "--port", str(port), *args],
        env=deployable_env(),
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}", timeout=600)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)


def percentile(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--optimize", action="store_true", help="also measure search after building HNSW (slow)"
    )
    args = parser.parse_args()
    total = args.documents * args.chunks
    print(f"corpus: {args.documents} documents x {args.chunks} chunks = {total} chunks of 384 dims")

    # --- Ingest: pages of 500 through IngestClient over HTTP, against building the same pages
    # in-process.
    corpus = Corpus(args.documents, args.chunks)
    started = time.perf_counter()
    after = None
    pages = 0
    while True:
        rows, after = corpus.page(None, after, PAGE)
        items = items_json(rows, corpus.embedder)
        orjson.dumps({"items": items, "next_cursor": None}, option=orjson.OPT_SERIALIZE_NUMPY)
        pages += 1
        if after is None:
            break
    baseline_pages = pages / (time.perf_counter() - started)
    del corpus

    with (
        standin(
            "ingest", "--documents", str(args.documents), "--chunks", str(args.chunks)
        ) as ingest_url,
        httpx.Client(timeout=60) as http,
    ):
        started = time.perf_counter()
        chunks: list[Chunk] = [
            c for page in IngestClient(http, ingest_url).iter_pages(limit=PAGE) for c in page.items
        ]
        elapsed = time.perf_counter() - started
        picks = random.Random(0).sample(chunks, args.queries)
        topics = {
            c.document_id: http.get(f"{ingest_url}/_control/documents/{c.document_id}").json()[
                "topic"
            ]
            for c in picks
        }
    fetched_pages = -(-len(chunks) // PAGE)
    print(
        f"ingest feed: {fetched_pages / elapsed:.1f} pages/s "
        f"({len(chunks) / elapsed:,.0f} chunks/s) via IngestClient; "
        f"baseline page build+serialise {baseline_pages:.1f} pages/s; "
        f"ratio {fetched_pages / elapsed / baseline_pages:.2f}"
    )
    embedder = HashingEmbedder(384)
    queries = [
        embedder.embed(
            [
                f"{topics[c.document_id][0]} {topics[c.document_id][1]} "
                f"{aspect(c.metadata['chunk_index'])}"
            ]
        )[0]
        for c in picks
    ]

    # --- Baseline: qdrant_edge in this process, same points, same batches.
    shard = qe.EdgeShard.create(
        tempfile.mkdtemp(prefix="edge-") + "/shard",
        qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)),
    )
    started = time.perf_counter()
    for start in range(0, total, BATCH):
        points = [
            qe.Point(
                point_id(c.id),
                c.vector,
                {
                    "document_id": c.document_id,
                    "chunk_id": c.id,
                    "text": c.text,
                    "metadata": c.metadata,
                    "updated_at": c.updated_at.isoformat(),
                },
            )
            for c in chunks[start : start + BATCH]
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    edge_rate = total / (time.perf_counter() - started)

    def edge_search() -> list[float]:
        samples = []
        for vector in queries:
            started = time.perf_counter()
            shard.query(qe.QueryRequest(limit=5, query=qe.Query.Nearest(vector), with_payload=True))
            samples.append(time.perf_counter() - started)
        return samples

    edge_latency = edge_search()

    # --- The stand-in through VectorStore (qdrant-client over REST).
    with (
        tempfile.TemporaryDirectory(prefix="qdrant-") as data,
        standin("qdrant", "--data", data) as qdrant_url,
    ):
        store = VectorStore(Settings(qdrant=QdrantSettings(url=qdrant_url, collection="bench")))
        store.ensure_collection()
        started = time.perf_counter()
        for start in range(0, total, BATCH):
            store.upsert(chunks[start : start + BATCH])
        rate = total / (time.perf_counter() - started)
        assert store.count() == total

        def store_search() -> tuple[list[float], int]:
            samples, right = [], 0
            for chunk, vector in zip(picks, queries, strict=False):
                started = time.perf_counter()
                hits = store.search(vector, 5)
                samples.append(time.perf_counter() - started)
                right += hits[0].chunk_id == chunk.id
            return samples, right

        latency, right = store_search()
        print(
            f"qdrant upsert: {rate:,.0f} points/s via VectorStore (batches of {BATCH}); "
            f"bare qdrant_edge {edge_rate:,.0f} points/s; ratio {rate / edge_rate:.2f}"
        )
        print(
            f"qdrant search (plain index): p50 {statistics.median(latency) * 1000:.2f} ms, "
            f"p95 {percentile(latency, 0.95) * 1000:.2f} ms via VectorStore; "
            f"bare p50 {statistics.median(edge_latency) * 1000:.2f} ms; "
            f"ratio {statistics.median(latency) / statistics.median(edge_latency):.2f}; "
            f"top hit is the targeted chunk for {right}/{len(picks)} queries"
        )
        if args.optimize:
            seconds = httpx.post(
                f"{qdrant_url}/_control/collections/bench/optimize", timeout=3600
            ).json()["seconds"]
            shard.optimize()
            latency, right = store_search()
            edge_latency = edge_search()
            print(
                f"qdrant search (HNSW, built in {seconds:.0f} s): "
                f"p50 {statistics.median(latency) * 1000:.2f} ms via VectorStore; "
                f"bare p50 {statistics.median(edge_latency) * 1000:.2f} ms; "
                f"ratio {statistics.median(latency) / statistics.median(edge_latency):.2f}; "
                f"top hit right for {right}/{len(picks)}"
            )
        store.close()
    shard.close()


if __name__ == "__main__":
    main()
