"""Benchmark: a full sync against its two stages alone, in the same run (issue 3's Benchmark).

    PYTHONPATH=libs:. python -m tests.benchmarks.full_sync [--documents 10000 --chunks 5 --stale 0
    --resync --rounds 3]

Everything is a separate process, as deployed locally: the Ingest stand-in serving documents ×
chunks 384-dim vectors over HTTP, the Qdrant stand-in (the local stack's Qdrant), a private Redis, a
fresh PostgreSQL database, and a real sync worker started from its entrypoint. Per round (after the
fetch, which feeds the upserts, the other three run in an order that rotates from round to round, so
drift in the machine's load does not always fall on the same one):

- fetch alone:  every page through IngestClient.iter_pages (the settings' batch size), nothing
written;
- upsert alone: the pages fetched above written into a fresh collection through the same VectorStore
                and batch size, twice: a plain loop (one `upsert(wait=True)` after another), and the
                copier itself fed from memory (its writers alone, no fetching);
- full sync:    `trigger_full_sync_task` sent to the worker, timed from dispatch to its stored
result,
                into a fresh collection (`--stale N`: seeded with N points Ingest does not have, so
                the final step has points to remove; `--resync`: already holding the corpus, so
                every point is rewritten). The task reports its copy and its removal of the points
                of other sync generations (by filter); both are in the total.

The ratio is full sync ÷ the slower stage, where the upsert stage counts at the faster of its two
ways (the stricter baseline). Target: >= 0.8 (the stages overlap instead of adding up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from ragcore.clients.ingest import Chunk, IngestClient
from ragcore.clients.transport import make_http_client
from ragcore.clients.vectorstore import VectorStore, point_id
from ragcore.settings import Settings, get_settings
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, deployable_env, free_port, wait_http_ok, wait_until_up
from services.sync.copier import copy_pages
from tests.support.stack import Stack, running_stack

T = TypeVar("T")
STAGES = ("fetch", "upsert_plain", "upsert_copier", "full")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every process in a process group (a deployable and its pool
    children)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and the CPU each process spent during one measured stage."""

    def __init__(self, processes: dict[str, Deployable]) -> None:
        self.processes = processes

    def _cpu(self) -> dict[str, float]:
        pids = {name: p.process.pid for name, p in self.processes.items() if p.process is not None}
        assert len(pids) == len(self.processes)
        cpu = {name: group_cpu_seconds(pid) for name, pid in pids.items()}
        return {"bench": time.process_time(), **cpu}

    def run(self, fn: Callable[[], T]) -> tuple[T, float, dict[str, float]]:
        cpu, started = self._cpu(), time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - started
        after = self._cpu()
        return out, elapsed, {name: after[name] - cpu[name] for name in after}


def fresh_store(settings: Settings, collection: str) -> VectorStore:
    store = VectorStore(
        settings.model_copy(
            update={"qdrant": settings.qdrant.model_copy(update={"collection": collection})}
        )
    )
    store.client.delete_collection(collection)
    store.ensure_collection()
    return store


def stale_chunks(n: int, dim: int) -> list[Chunk]:
    """Points of a document Ingest never had: the full sync must remove exactly these."""
    vectors = np.random.default_rng(0).standard_normal((n, dim)).tolist()
    at = datetime.now(UTC)
    return [Chunk(f"stale-{i}", "stale-doc", "gone", vectors[i], {}, at) for i in range(n)]


def run_round(
    stack: Stack, meter: Meter, settings: Settings, args: argparse.Namespace, n: int, turn: int
) -> dict[str, Any]:
    """Fetch alone (its pages feed the upserts), then the other three in an order that rotates by
    `turn`."""
    batch = settings.neighbours.sync_batch_size
    http = make_http_client(settings.neighbours)
    ingest = IngestClient(http, settings.neighbours.ingest_url, settings.neighbours.ingest_token)
    figures: dict[str, Any] = {}

    pages, seconds, cpu = meter.run(lambda: list(ingest.iter_pages(limit=batch)))
    total = sum(len(p.items) for p in pages)
    assert total >= n, f"Ingest served {total} chunks, expected {n}"
    figures["fetch"] = (total / seconds, seconds, cpu)
    expected_ids = {point_id(c.id) for page in pages for c in page.items}

    def upsert_plain() -> None:
        store = fresh_store(settings, "bench_upsert_plain")
        copied, seconds, cpu = meter.run(
            lambda: sum(store.upsert(page.items, wait=True) for page in pages)
        )
        assert copied == total == store.count()
        figures["upsert_plain"] = (total / seconds, seconds, cpu)
        store.client.delete_collection(store.collection)
        store.close()

    def upsert_copier() -> None:
        store = fresh_store(settings, "bench_upsert_copier")
        # the copier's writers, fed from memory
        report, seconds, cpu = meter.run(lambda: copy_pages(iter(pages), store))
        assert report.copied == total == store.count()
        figures["upsert_copier"] = (total / seconds, seconds, cpu)
        store.client.delete_collection(store.collection)
        store.close()

    def full() -> None:
        # The worker's collection, emptied (and seeded); the worker's store object stays valid.
        store = fresh_store(settings, settings.qdrant.collection)
        store.upsert(stale_chunks(args.stale, settings.qdrant.vector_size))
        if args.resync:
            for page in pages:
                store.upsert(page.items)

        def full_sync() -> dict[str, Any]:
            task_id = dispatch.send(stack.producer, contracts.TRIGGER_FULL_SYNC)
            result: dict[str, Any] = stack.producer.AsyncResult(task_id).get(
                timeout=3600, interval=0.01
            )
            return result

        result, seconds, cpu = meter.run(full_sync)
        assert result["copied"] == total and result["removed"] == args.stale, result
        assert (
            result["points"] == total
            and set(store.iter_point_ids(page_size=10_000)) == expected_ids
        ), "Qdrant != Ingest"
        figures["full"] = (total / seconds, seconds, cpu)
        figures["full_task"] = result["seconds"]
        store.close()

    stages = [upsert_plain, upsert_copier, full]
    for stage in stages[turn % 3 :] + stages[: turn % 3]:
        stage()
    http.close()
    return figures


def print_round(figures: dict[str, Any]) -> None:
    for stage in STAGES:
        rate, seconds, cpu = figures[stage]
        busy = "  ".join(f"{name} {value:5.2f}" for name, value in cpu.items())
        print(
            f"  {stage:>13}: {rate:8,.0f} points/s  {seconds:6.2f} s   "
            f"cpu s: {busy}  (total {sum(cpu.values()):5.2f})"
        )
    task = figures["full_task"]
    outside = figures["full"][1] - task["copy"] - task["remove"]
    print(
        f"  {'':>13}  of which copy {task['copy']:.2f} s, "
        f"stale removal by filter {task['remove']:.2f} s, "
        f"the rest (dispatch, counts, mark, result) {outside:.2f} s"
    )


def ratio(figures: dict[str, Any]) -> float:
    upsert = max(figures["upsert_plain"][0], figures["upsert_copier"][0])
    return float(figures["full"][0] / min(figures["fetch"][0], upsert))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument(
        "--stale", type=int, default=0, help="points in Qdrant beforehand that Ingest does not have"
    )
    parser.add_argument(
        "--resync",
        action="store_true",
        help="the collection already holds the corpus (a periodic re-sync)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="the machine is shared: report the median round"
    )
    args = parser.parse_args()
    n = args.documents * args.chunks

    ingest_port, qdrant_port = free_port(), free_port()
    env = deployable_env()
    ingest = Deployable(
        "ragcore_dev.standins.ingest",
        env,
        (
            "--port",
            str(ingest_port),
            "--documents",
            str(args.documents),
            "--chunks",
            str(args.chunks),
        ),
    )
    qdrant = Deployable(
        "ragcore_dev.standins.qdrant",
        env,
        ("--port", str(qdrant_port), "--data", tempfile.mkdtemp(prefix="bench-qdrant-")),
    )
    ingest.start()
    qdrant.start()
    try:
        wait_http_ok(f"http://127.0.0.1:{qdrant_port}/healthz", 60, qdrant)
        # it binds once the corpus is built
        wait_until_up(f"http://127.0.0.1:{ingest_port}", timeout=600)
        with running_stack(
            ingest_url=f"http://127.0.0.1:{ingest_port}",
            qdrant_url=f"http://127.0.0.1:{qdrant_port}",
            qdrant_collection=f"bench_full_{uuid.uuid4().hex[:8]}",
            log_level="WARNING",
        ) as stack:
            settings = get_settings()
            # One pool process, warmed by an incremental sync that copies nothing (its store,
            # clients and lazy imports are ready): the timing is the full sync's, not a cold
            # process's first task.
            worker = stack.start_worker(Queue.SYNC, "--concurrency=1", name="bench-sync")
            warm = dispatch.send(
                stack.producer, contracts.SYNC_EMBEDDINGS, {"since": "2999-01-01T00:00:00Z"}
            )
            stack.producer.AsyncResult(warm).get(timeout=120)
            meter = Meter({"ingest": ingest, "qdrant": qdrant, "worker": worker})
            print(
                f"corpus: {n:,} chunks of {settings.qdrant.vector_size} dims; "
                f"batch size {settings.neighbours.sync_batch_size}; "
                f"{args.stale:,} stale points{'; a re-sync' if args.resync else ''}; "
                f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
            )
            rounds = []
            for r in range(args.rounds):
                figures = run_round(stack, meter, settings, args, n, r)
                rounds.append(figures)
                print(f"round {r + 1}: ratio full / slower stage {ratio(figures):.2f}")
                print_round(figures)
    finally:
        ingest.stop()
        qdrant.stop()

    median = {stage: statistics.median(f[stage][0] for f in rounds) for stage in STAGES}
    ratios = [ratio(f) for f in rounds]
    print(
        f"median of {len(rounds)} round(s): "
        + ", ".join(f"{s} {median[s]:,.0f} points/s" for s in STAGES)
    )
    print(
        f"ratio full / slower stage: median {statistics.median(ratios):.2f} (target >= 0.8); "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
