"""Benchmark: query latency with the post-query reports vs without them, same run, same data.

    PYTHONPATH=libs:. python -m tests.benchmarks.query_dispatch [--blocks 12 --block-size 25]

The query service runs in this process exactly as the API's endpoint calls it; PostgreSQL, a private
Redis (broker and hot cache) and the Qdrant stand-in (a separate process) are real. Three modes,
interleaved in blocks whose order rotates (so drift in the machine's load falls on all three):

- none:     `reports=False` — no outbox rows, nothing published (the baseline);
- recorded: the two reports are written to the outbox in the answer's transaction, and nothing is
            published while a block runs (between blocks, untimed, they are marked published):
            the cost of recording the intent alone;
- relay:    recorded, and the outbox relay — a thread of this process, woken after each commit, as
            api/main.py runs it — publishes them to Redis at once: the configuration as deployed.

No worker consumes the tasks (in a deployment they run elsewhere). Every query is new: a cache miss
that embeds, searches, generates and stores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import redis
from sqlalchemy import update

from ragcore.celery_app import create_app
from ragcore.db import session_scope, utcnow
from ragcore.db.models import OutboxEntry
from ragcore.outbox import Relay
from ragcore.query import QueryRequest, build_service
from ragcore.settings import get_settings
from ragcore.vectorstore import VectorStore
from tests.benchmarks.common import load_corpus, percentile
from tests.standins.ingest import Corpus
from tests.support.processes import Deployable, deployable_env, wait_http_ok, wait_until
from tests.support.servers import free_port
from tests.support.stack import running_stack

MODES = ("none", "recorded", "relay")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=12, help="blocks per mode")
    parser.add_argument("--block-size", type=int, default=25)
    args = parser.parse_args()

    port = free_port()
    qdrant = Deployable("tests.standins.qdrant", deployable_env(), ("--port", str(port), "--data", tempfile.mkdtemp(prefix="bench-qdrant-")))
    qdrant.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", 60, qdrant)
        unlimited = '{"free": 1000000000, "pro": 1000000000, "enterprise": 1000000000}'
        with running_stack(qdrant_url=f"http://127.0.0.1:{port}", qdrant_collection="bench", log_level="WARNING",
                           tier_daily_limits=unlimited):
            run(args)
    finally:
        qdrant.stop()


def run(args: argparse.Namespace) -> None:
    settings = get_settings()
    corpus = Corpus(args.documents, args.chunks, dim=settings.vector_size)
    store = VectorStore(settings)
    print(f"corpus: {load_corpus(store, corpus)} chunks in Qdrant; {args.blocks} blocks x {args.block_size} queries per mode")
    store.close()
    docs = list(corpus.documents().values())

    celery = create_app("bench-api", settings)
    # The relay only runs when woken (the interval is longer than the run): "recorded" blocks stay unpublished.
    relay = Relay(celery, interval=3600)
    relay.start()
    waking = {"on": False}
    service = build_service(settings, on_commit=lambda: relay.wake() if waking["on"] else None)
    count = 0

    def ask(mode: str) -> float:
        nonlocal count
        count += 1
        doc = docs[count % len(docs)]
        # The trailing word makes every question new (a cache miss) without moving it off its chunk.
        request = QueryRequest(user_id=f"user-{count % 50}", query=f"{doc.query(count % args.chunks)} q{count}")
        started = time.perf_counter()
        service.answer(request, reports=mode != "none")
        return (time.perf_counter() - started) * 1000

    broker = redis.Redis.from_url(settings.broker)
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    published_by_relay = 0
    for block in range(-1, args.blocks):  # block -1 warms up every mode and is not kept
        for i in range(len(MODES)):
            mode = MODES[(block + i) % len(MODES)]
            waking["on"] = mode == "relay"
            before = int(broker.llen("notifications"))
            timings = [ask(mode) for _ in range(args.block_size)]
            if mode == "relay":
                wait_until(lambda: int(broker.llen("notifications")) - before >= args.block_size, 60, "the block's reports")
                published_by_relay += int(broker.llen("notifications")) - before
            elif mode == "recorded":
                with session_scope() as session:  # untimed: keep them away from the relay's blocks
                    session.execute(update(OutboxEntry).where(OutboxEntry.published_at.is_(None)).values(published_at=utcnow()))
            if block >= 0:
                samples[mode].extend(timings)
    relay.stop()
    celery.close()

    print(f"query results published by the relay during its blocks: {published_by_relay}")
    base = percentile(samples["none"], 0.5), percentile(samples["none"], 0.99)
    for mode in MODES:
        s = samples[mode]
        p50, p99 = percentile(s, 0.5), percentile(s, 0.99)
        print(f"{mode:>9}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  mean {statistics.fmean(s):6.2f} ms"
              f"   ratio to none: p50 {p50 / base[0]:.3f}  p99 {p99 / base[1]:.3f}")
    print("target: p50 ratio <= 1.02 (relay, as deployed)")


if __name__ == "__main__":
    main()
