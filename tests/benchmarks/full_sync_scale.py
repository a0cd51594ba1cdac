"""Benchmark: a full sync's worker memory and speed at a small and a large corpus, in one run.

    PYTHONPATH=libs:. python -m tests.benchmarks.full_sync_scale \
        [--sizes 50000 1000000 --chunks 100 --stale 1000]

Issue 15 point 4: the sync worker's peak RSS at the large size must stay within 1.2x of the small
one, and its points/s within 0.8x. As deployed locally: the Ingest stand-in serving a generated
corpus (documents x `--chunks`; texts and vectors are made as each page is served, so the stand-in
does not hold the corpus's vectors), the Qdrant stand-in, a private Redis, a fresh PostgreSQL
database. Per size, in order: Ingest is reset to the corpus, the collection emptied and seeded with
`--stale` points Ingest does not have, and a fresh sync worker (its entrypoint, concurrency 1)
warmed by an incremental sync that copies nothing; then `trigger_full_sync_task` is timed from
dispatch to its result. Peak RSS is each worker process's VmHWM (/proc: the kernel's high-water mark
since the process started, so no sampling misses a spike), for the pool process that ran the task
and for the whole worker (parent + pool).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from typing import Any

import httpx

from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, deployable_env, free_port, wait_http_ok, wait_until_up
from tests.benchmarks.full_sync import fresh_store, stale_chunks
from tests.support.stack import Stack, running_stack


def group_hwm_kib(pgid: int) -> dict[int, int]:
    """VmHWM (peak resident set, KiB) of every process in a process group, by pid."""
    peaks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            with open(f"/proc/{entry}/status") as f:
                hwm = next(line for line in f if line.startswith("VmHWM:"))
            peaks[int(entry)] = int(hwm.split()[1])
        except (OSError, StopIteration):
            continue  # exited meanwhile
    return peaks


def measure(stack: Stack, ingest_url: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    documents = n // args.chunks
    spec = {"documents": documents, "chunks": args.chunks}
    corpus = httpx.post(f"{ingest_url}/_control/reset", json=spec, timeout=600).json()
    assert corpus["chunks"] == n, corpus
    settings = get_settings()
    store = fresh_store(settings, settings.qdrant.collection)
    store.upsert(stale_chunks(args.stale, settings.qdrant.vector_size))
    worker = stack.start_worker(Queue.SYNC, "--concurrency=1", name=f"scale-{n}")
    nothing = {"since": "2999-01-01T00:00:00Z"}
    warm = dispatch.send(stack.producer, contracts.SYNC_EMBEDDINGS, nothing)
    stack.producer.AsyncResult(warm).get(timeout=120)
    assert worker.process is not None
    parent = worker.process.pid
    before = group_hwm_kib(parent)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    task_id = dispatch.send(stack.producer, contracts.TRIGGER_FULL_SYNC)
    result: dict[str, Any] = stack.producer.AsyncResult(task_id).get(timeout=7200, interval=0.05)
    seconds = time.perf_counter() - started
    peaks = group_hwm_kib(parent)
    worker.stop()
    assert (result["copied"], result["removed"], result["points"]) == (n, args.stale, n), result
    assert store.count() == n
    store.close()
    pool = max((pid for pid in peaks if pid != parent), key=lambda pid: peaks[pid])
    return {
        "n": n,
        "seconds": seconds,
        "rate": n / seconds,
        "pool_mib": peaks[pool] / 1024,
        "pool_before_mib": before.get(pool, 0) / 1024,
        "worker_mib": sum(peaks.values()) / 1024,
        "task": result["seconds"],
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs=2, default=[50_000, 1_000_000], metavar=("SMALL", "LARGE")
    )
    parser.add_argument(
        "--chunks", type=int, default=100, help="chunks per document (documents = size / chunks)"
    )
    parser.add_argument(
        "--stale",
        type=int,
        default=1000,
        help="points in Qdrant beforehand that Ingest does not have",
    )
    args = parser.parse_args()

    ingest_port, qdrant_port = free_port(), free_port()
    env = deployable_env()
    ingest_args = ("--port", str(ingest_port), "--documents", "1")
    ingest = Deployable("ragcore_dev.standins.ingest", env, ingest_args)
    data = tempfile.mkdtemp(prefix="bench-qdrant-")
    qdrant_args = ("--port", str(qdrant_port), "--data", data)
    qdrant = Deployable("ragcore_dev.standins.qdrant", env, qdrant_args)
    ingest.start()
    qdrant.start()
    ingest_url = f"http://127.0.0.1:{ingest_port}"
    figures = []
    try:
        wait_http_ok(f"http://127.0.0.1:{qdrant_port}/healthz", 60, qdrant)
        wait_until_up(ingest_url, timeout=60)
        with running_stack(
            ingest_url=ingest_url,
            qdrant_url=f"http://127.0.0.1:{qdrant_port}",
            qdrant_collection=f"bench_scale_{uuid.uuid4().hex[:8]}",
            log_level="WARNING",
        ) as stack:
            print(
                f"{os.cpu_count()} CPUs, shared; "
                f"batch size {get_settings().neighbours.sync_batch_size}; "
                f"{args.chunks} chunks per document; {args.stale:,} stale points per run"
            )
            for n in args.sizes:
                f = measure(stack, ingest_url, n, args)
                figures.append(f)
                task = f["task"]
                print(
                    f"{f['n']:>9,} chunks: {f['rate']:7,.0f} points/s ({f['seconds']:.1f} s; "
                    f"copy {task['copy']} s, removal {task['remove']} s); peak RSS "
                    f"pool process {f['pool_mib']:.0f} MiB (warm, before the sync "
                    f"{f['pool_before_mib']:.0f} MiB), worker {f['worker_mib']:.0f} MiB; "
                    f"load average {f['load']:.1f}"
                )
    finally:
        ingest.stop()
        qdrant.stop()
        shutil.rmtree(data, ignore_errors=True)  # 1M points take ~2 GB
    small, large = figures
    print(
        f"RSS ratio {large['pool_mib'] / small['pool_mib']:.2f} (target <= 1.2); "
        f"points/s ratio {large['rate'] / small['rate']:.2f} (target >= 0.8); "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
