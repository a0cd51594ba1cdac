"""Benchmark: query latency with the post-query reports vs without them, same run, same data.

    PYTHONPATH=libs:. python -m tests.benchmarks.query_dispatch [--rounds 12 --block-size 50]

The query service runs in this process exactly as the API's endpoint calls it; PostgreSQL, a private
Redis (broker and hot cache), the Qdrant stand-in and Beat (whose report relay publishes the
reports, as deployed) are real, separate processes. No worker consumes the tasks (in a deployment
they run elsewhere). Every query is new: a cache miss that embeds, searches, generates and stores.
Each round runs one block of each mode, in an order that alternates, so drift in the machine's load
falls on both:

- none:    `reports=False`: the message is stored as reported already, nothing for the relay;
- reports: as deployed: the message is stored unreported and the relay (polling every
           `report_relay_seconds`, its default) publishes both reports. Each block's reports are
           awaited on the queues before the next block starts, so every block pays for its own.

The relay runs throughout, as it does in production.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import redis

from ragcore.clients.vectorstore import VectorStore
from ragcore.query import QueryRequest, QueryService, build_service
from ragcore.settings import get_settings
from ragcore_dev.processes import Deployable, deployable_env, free_port, wait_http_ok, wait_until
from ragcore_dev.standins.ingest import Corpus, Document
from tests.benchmarks.common import load_corpus, percentile
from tests.support.stack import Stack, running_stack

MODES = ("none", "reports")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=50)
    args = parser.parse_args()

    port = free_port()
    qdrant = Deployable(
        "ragcore_dev.standins.qdrant",
        deployable_env(),
        ("--port", str(port), "--data", tempfile.mkdtemp(prefix="bench-qdrant-")),
    )
    qdrant.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", 60, qdrant)
        unlimited = '{"free": 1000000000, "pro": 1000000000, "enterprise": 1000000000}'
        with running_stack(
            qdrant_url=f"http://127.0.0.1:{port}",
            qdrant_collection="bench",
            log_level="WARNING",
            tier_daily_limits=unlimited,
            beat_schedule="{}",
        ) as stack:
            run(stack, args)
    finally:
        qdrant.stop()


class Bench:
    """Fresh questions over the corpus, timed around the service call the endpoint makes, in
    blocks."""

    def __init__(
        self,
        service: QueryService,
        docs: list[Document],
        args: argparse.Namespace,
        broker: redis.Redis,
    ) -> None:
        self.service, self.docs, self.args, self.broker = service, docs, args, broker
        self.count = 0
        self.published = 0
        #: CPU seconds of this process (the API's part) per mode.
        self.cpu: dict[str, float] = {}

    def ask(self, reports: bool) -> float:
        self.count += 1
        doc = self.docs[self.count % len(self.docs)]
        # The trailing word makes every question new (a cache miss) without moving it off its chunk.
        query = f"{doc.query(self.count % self.args.chunks)} q{self.count}"
        request = QueryRequest(user_id=f"user-{self.count % 50}", query=query)
        started = time.perf_counter()
        self.service.answer(request, reports=reports)
        return (time.perf_counter() - started) * 1000

    def block(self, mode: str, keep: bool) -> list[float]:
        before = int(self.broker.llen("notifications"))
        cpu_start = time.process_time()
        timings = [self.ask(mode == "reports") for _ in range(self.args.block_size)]
        cpu = time.process_time() - cpu_start
        # untimed: the block's reports are all published before the next block
        if mode == "reports":
            wait_until(
                lambda: int(self.broker.llen("notifications")) - before >= self.args.block_size,
                60,
                "the block's reports",
            )
            self.published += int(self.broker.llen("notifications")) - before
        if keep:
            self.cpu[mode] = self.cpu.get(mode, 0.0) + cpu
        return timings

    def rounds(self) -> dict[str, list[list[float]]]:
        blocks: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
        for r in range(-1, self.args.rounds):  # round -1 warms both modes up and is not kept
            for i in range(len(MODES)):
                mode = MODES[(r + i) % len(MODES)]
                timings = self.block(mode, keep=r >= 0)
                if r >= 0:
                    blocks[mode].append(timings)
        return blocks


def summarize(blocks: dict[str, list[list[float]]], cpu: dict[str, float]) -> None:
    base = [t for b in blocks["none"] for t in b]
    for mode, mode_blocks in blocks.items():
        s = [t for b in mode_blocks for t in b]
        p50, p99 = percentile(s, 0.5), percentile(s, 0.99)
        # Paired per round: robust to the machine's load drifting between rounds.
        paired = statistics.median(
            percentile(b, 0.5) / percentile(n, 0.5)
            for b, n in zip(mode_blocks, blocks["none"], strict=False)
        )
        print(
            f"  {mode:>8}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"mean {statistics.fmean(s):6.2f} ms  "
            f"p50/none {p50 / percentile(base, 0.5):.3f}  "
            f"p99/none {p99 / percentile(base, 0.99):.3f}  "
            f"median per-round p50 ratio {paired:.3f}  "
            f"CPU of the API process {1000 * cpu[mode] / len(s):.2f} ms/query"
        )


def run(stack: Stack, args: argparse.Namespace) -> None:
    settings = get_settings()
    corpus = Corpus(args.documents, args.chunks, dim=settings.qdrant.vector_size)
    store = VectorStore(settings)
    print(
        f"corpus: {load_corpus(store, corpus)} chunks in Qdrant; "
        f"{args.rounds} rounds of {args.block_size} queries per mode; "
        f"relay every {settings.beat.report_relay_seconds} s"
    )
    store.close()
    stack.start("services.beat.main")  # the report relay, as deployed
    bench = Bench(
        build_service(settings),
        list(corpus.documents().values()),
        args,
        redis.Redis.from_url(settings.redis.broker),
    )
    blocks = bench.rounds()
    print(
        f"reports published: {bench.published} results "
        f"for {args.rounds + 1} blocks of {args.block_size} queries"
    )
    summarize(blocks, bench.cpu)
    print("target: p50 with reports / without <= 1.02")


if __name__ == "__main__":
    main()
