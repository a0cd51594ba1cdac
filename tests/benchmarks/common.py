"""What the benchmarks share: percentiles, the Ingest stand-in's corpus written into Qdrant, and
timed drains of idle worker processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from ragcore.clients.ingest import Chunk
from ragcore.clients.vectorstore import VectorStore
from ragcore_dev.processes import Deployable, wait_until
from ragcore_dev.standins.ingest import Corpus, from_micros
from tests.support.stack import Stack


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


@dataclass
class Phase:
    name: str
    hostname: str
    queue: str
    tasks: int
    publish: Callable[[int], str]
    #: Instead of `publish` once per task: publish `n` tasks in one go, return the last id.
    publish_batch: Callable[[int], str] | None = None


def timed_drain(producer: Celery, phase: Phase, done: Callable[[Phase, str], bool]) -> float:
    """Tasks per second for the phase's tasks queued up front and drained by its worker alone."""
    if phase.publish_batch is not None:
        last = phase.publish_batch(phase.tasks)
    else:
        last = [phase.publish(i) for i in range(phase.tasks)][-1]
    started = time.perf_counter()
    producer.control.add_consumer(phase.queue, destination=[phase.hostname], reply=True)
    wait_until(lambda: done(phase, last), 600, f"{phase.tasks} tasks", interval=0.005)
    elapsed = time.perf_counter() - started
    producer.control.cancel_consumer(phase.queue, destination=[phase.hostname], reply=True)
    return phase.tasks / elapsed


def start_idle_worker(
    stack: Stack, module: str, hostname: str, queue: str, *args: str
) -> Deployable:
    """Start a worker process (`--concurrency=1`); its consumer waits cancelled for a drain."""
    worker = stack.start(module, f"--hostname={hostname}", "--concurrency=1", *args)
    stack.wait_consuming(hostname, worker, timeout=240)  # a loaded machine starts slowly
    stack.producer.control.cancel_consumer(queue, destination=[hostname], reply=True)
    return worker


def group_cpu_seconds(worker: Deployable) -> float:
    """CPU time (user + system) so far of every live process in `worker`'s process group (a
    worker's main process and its pool)."""
    assert worker.process is not None
    group, total = worker.process.pid, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
