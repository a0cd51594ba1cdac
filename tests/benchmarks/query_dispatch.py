"""Benchmark: query latency with the post-query reports vs without them, same run, same data.

    PYTHONPATH=libs:. python -m tests.benchmarks.query_dispatch [--rounds 12 --block-size 25]

The query service runs in this process exactly as the API's endpoint calls it; PostgreSQL, a private
Redis (broker and hot cache) and the Qdrant stand-in (a separate process) are real. No worker
consumes the tasks (in a deployment they run elsewhere). Every query is new: a cache miss that
embeds, searches, generates and stores. Each round runs one block of every mode of its phase, in an
order that rotates, so drift in the machine's load falls on all modes.

Phase 1, the outbox relay as api/main.py runs it (a thread of the API process, woken on commit):
- none:     `reports=False` — no outbox rows, nothing published (the baseline);
- recorded: the two reports written to the outbox in the answer's transaction, nothing published
            during the block (between blocks, untimed, the rows are marked published): the cost of
            recording the intent alone;
- relay:    recorded, and published at once by the woken relay thread: as deployed.
Phase 2, the same relay in a process of its own (tests.benchmarks.relay_process, polling every 50 ms):
- none, and relay-process: recorded and published by that process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import redis
from sqlalchemy import update

from ragcore.celery_app import create_app
from ragcore.db import session_scope, utcnow
from ragcore.db.models import OutboxEntry
from ragcore.outbox import Relay
from ragcore.query import QueryRequest, QueryService, build_service
from ragcore.settings import get_settings
from ragcore.vectorstore import VectorStore
from tests.benchmarks.common import load_corpus, percentile
from tests.standins.ingest import Corpus, Document
from tests.support.processes import Deployable, deployable_env, wait_http_ok, wait_until
from tests.support.servers import free_port
from tests.support.stack import Stack, running_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=25)
    args = parser.parse_args()

    port = free_port()
    qdrant = Deployable("tests.standins.qdrant", deployable_env(), ("--port", str(port), "--data", tempfile.mkdtemp(prefix="bench-qdrant-")))
    qdrant.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", 60, qdrant)
        unlimited = '{"free": 1000000000, "pro": 1000000000, "enterprise": 1000000000}'
        with running_stack(qdrant_url=f"http://127.0.0.1:{port}", qdrant_collection="bench", log_level="WARNING",
                           tier_daily_limits=unlimited) as stack:
            run(stack, args)
    finally:
        qdrant.stop()


class Bench:
    """Fresh questions over the corpus, timed around the service call the endpoint makes, in blocks."""

    def __init__(self, service: QueryService, docs: list[Document], args: argparse.Namespace, broker: redis.Redis) -> None:
        self.service, self.docs, self.args, self.broker = service, docs, args, broker
        self.count = 0
        self.published = 0
        #: CPU seconds of this process (all threads: the relay's too) per mode, and queries counted.
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
        """Time one block; its CPU (this process, relay thread included) counts until its reports are out."""
        before = int(self.broker.llen("notifications"))
        cpu_start = time.process_time()
        timings = [self.ask(mode != "none") for _ in range(self.args.block_size)]
        if mode.startswith("relay"):  # every report of the block is published before the next block
            wait_until(lambda: int(self.broker.llen("notifications")) - before >= self.args.block_size, 60, "the block's reports")
            self.published += int(self.broker.llen("notifications")) - before
        cpu = time.process_time() - cpu_start
        if mode == "recorded":
            with session_scope() as session:  # untimed: keep these rows away from the relay's blocks
                session.execute(update(OutboxEntry).where(OutboxEntry.published_at.is_(None)).values(published_at=utcnow()))
        if keep:
            self.cpu[mode] = self.cpu.get(mode, 0.0) + cpu
        return timings

    def rounds(self, modes: tuple[str, ...], before_block: Callable[[str], None]) -> dict[str, list[list[float]]]:
        blocks: dict[str, list[list[float]]] = {mode: [] for mode in modes}
        for r in range(-1, self.args.rounds):  # round -1 warms every mode up and is not kept
            for i in range(len(modes)):
                mode = modes[(r + i) % len(modes)]
                before_block(mode)
                timings = self.block(mode, keep=r >= 0)
                if r >= 0:
                    blocks[mode].append(timings)
        return blocks


def summarize(title: str, blocks: dict[str, list[list[float]]], cpu: dict[str, float]) -> None:
    print(title)
    base = [t for b in blocks["none"] for t in b]
    for mode, mode_blocks in blocks.items():
        s = [t for b in mode_blocks for t in b]
        p50, p99 = percentile(s, 0.5), percentile(s, 0.99)
        # Paired per round: robust to the machine's load drifting between rounds.
        paired = statistics.median(percentile(b, 0.5) / percentile(n, 0.5) for b, n in zip(mode_blocks, blocks["none"]))
        print(f"  {mode:>14}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  mean {statistics.fmean(s):6.2f} ms  "
              f"p50/none {p50 / percentile(base, 0.5):.3f}  p99/none {p99 / percentile(base, 0.99):.3f}  "
              f"median per-round p50 ratio {paired:.3f}  CPU of this process {1000 * cpu[mode] / len(s):.2f} ms/query")


def run(stack: Stack, args: argparse.Namespace) -> None:
    settings = get_settings()
    corpus = Corpus(args.documents, args.chunks, dim=settings.vector_size)
    store = VectorStore(settings)
    print(f"corpus: {load_corpus(store, corpus)} chunks in Qdrant; {args.rounds} rounds of {args.block_size} queries per mode")
    store.close()
    docs = list(corpus.documents().values())
    broker = redis.Redis.from_url(settings.broker)

    celery = create_app("bench-api", settings)
    # Runs only when woken (its interval outlasts the run), and is woken only in "relay" blocks.
    relay = Relay(celery, interval=3600)
    relay.start()
    waking = {"on": False}
    phase1 = Bench(build_service(settings, on_commit=lambda: relay.wake() if waking["on"] else None), docs, args, broker)
    thread_blocks = phase1.rounds(("none", "recorded", "relay"), lambda mode: waking.update(on=mode == "relay"))
    relay.stop()
    celery.close()

    relay_process = stack.start("tests.benchmarks.relay_process", "--interval", "0.05")
    phase2 = Bench(build_service(settings), docs, args, broker)
    process_blocks = phase2.rounds(("none", "relay-process"), lambda mode: None)
    relay_process.stop()

    print(f"reports published during relay blocks: {phase1.published} (thread), {phase2.published} (process)")
    summarize("phase 1: relay thread in the API process (as deployed)", thread_blocks, phase1.cpu)
    summarize("phase 2: relay in its own process", process_blocks, phase2.cpu)
    print("target: p50 with reports / without <= 1.02")


if __name__ == "__main__":
    main()
