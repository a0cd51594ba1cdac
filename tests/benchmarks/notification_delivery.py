"""Benchmark: notification deliveries/s of one worker process against the Users stand-in.

    PYTHONPATH=libs:. python -m tests.benchmarks.notification_delivery [--tasks 1000 --fresh-tasks 200]

One worker process (`--concurrency=1`) started from the shipped entrypoint, a private Redis, a fresh
PostgreSQL database (the task ledger is written per task, as deployed), the Users stand-in in this
process. Measured in the same run:

- no-op:   the same worker's canary task (validation, ledger, result; no HTTP) — its ceiling;
- shared:  `send_query_result_to_users` with the process's one httpx client (as shipped);
- fresh:   the same task from the same entrypoint with a new httpx client per task (the baseline,
           tests.benchmarks.fresh_client_worker).

With `--diagnose`, also no-op and shared-client throughput of the worker without parts of its
per-task bookkeeping (tests.benchmarks.lean_worker): what a delivery costs beside them.

Each phase publishes its tasks while the worker's consumer is cancelled, then re-adds the consumer
and times until the last task's result is stored (one process consumes FIFO, so the last is last).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

from celery import Celery

from ragcore.contracts import CANARIES, SEND_QUERY_RESULT, Queue
from tests.standins.users import start_users
from tests.support.processes import Deployable, wait_until
from tests.support.stack import Stack, running_stack

QUEUE = Queue.NOTIFICATIONS.value


def report(i: int) -> dict[str, object]:
    return {
        "user_id": f"user-{i % 50}",
        "conversation_id": f"conv-{i}",
        "message_id": str(uuid.uuid4()),
        "query": "glacier harbor safety",
        "answer": "Glacier and harbor: safety. [1]",
        "sources": [{"document_id": "doc-1", "chunk_id": "doc-1/chunk-003", "score": 0.81, "text": "Glacier and harbor: safety.", "metadata": {}}],
        "tokens_used": 9,
        "processing_time_ms": 12.5,
    }


def timed_drain(producer: Celery, hostname: str, n: int, publish: Callable[[int], str]) -> float:
    """Tasks per second for `n` tasks queued up front and drained by the worker `hostname`."""
    producer.control.cancel_consumer(QUEUE, destination=[hostname], reply=True)
    last = [publish(i) for i in range(n)][-1]
    started = time.perf_counter()
    producer.control.add_consumer(QUEUE, destination=[hostname], reply=True)
    result = producer.AsyncResult(last)
    wait_until(result.ready, 600, f"{n} tasks", interval=0.005)
    elapsed = time.perf_counter() - started
    assert result.successful(), result.result
    return n / elapsed


def start_worker(stack: Stack, module: str, hostname: str) -> Deployable:
    worker = stack.start(module, f"--hostname={hostname}", "--concurrency=1")
    stack.wait_consuming(hostname, worker)
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per no-op and shared-client phase")
    parser.add_argument("--fresh-tasks", type=int, default=200, help="tasks of the new-client-per-task phase")
    parser.add_argument("--diagnose", action="store_true", help="also measure the worker without the ledger, events")
    args = parser.parse_args()

    with start_users() as users, running_stack(users_url=users.url) as stack:
        producer = stack.producer

        def canary(i: int) -> str:
            return producer.send_task(CANARIES[Queue.NOTIFICATIONS].name, kwargs={"echo": str(i)}, queue=QUEUE).id

        def delivery(i: int) -> str:
            return producer.send_task(SEND_QUERY_RESULT.name, kwargs=report(i), queue=QUEUE).id

        shipped = start_worker(stack, "services.notifications.worker", "shared@bench")
        timed_drain(producer, "shared@bench", 100, delivery)  # warm up: the child's client, pools, imports
        noop = [timed_drain(producer, "shared@bench", args.tasks, canary) for _ in range(2)]
        shared = [timed_drain(producer, "shared@bench", args.tasks, delivery) for _ in range(2)]
        shipped.stop()

        baseline = start_worker(stack, "tests.benchmarks.fresh_client_worker", "fresh@bench")
        timed_drain(producer, "fresh@bench", 20, delivery)
        fresh = timed_drain(producer, "fresh@bench", args.fresh_tasks, delivery)
        baseline.stop()

        lean: list[tuple[str, float, float]] = []
        if args.diagnose:
            for label, extra in (("without the ledger's task signals", ()), ("also without task events, track_started", ("--no-events",))):
                worker = stack.start("tests.benchmarks.lean_worker", f"--hostname=lean{len(lean)}@bench", "--concurrency=1", *extra)
                stack.wait_consuming(f"lean{len(lean)}@bench", worker)
                timed_drain(producer, f"lean{len(lean)}@bench", 100, delivery)
                hostname = f"lean{len(lean)}@bench"
                lean.append((label, timed_drain(producer, hostname, args.tasks, canary), timed_drain(producer, hostname, args.tasks, delivery)))
                worker.stop()

        delivered = len(users.app.deliveries("query-results"))
        expected = 100 + 2 * args.tasks + 20 + args.fresh_tasks + len(lean) * (100 + args.tasks)
        assert delivered == expected, f"Users recorded {delivered} deliveries, {expected} were sent"
        print(f"deliveries recorded by Users: {delivered} (all sent, none twice: {users.app.duplicates['query-results']} duplicates)")
        best_noop, best_shared = max(noop), max(shared)
        print(f"no-op canary:            {' / '.join(f'{x:7.1f}' for x in noop)} tasks/s")
        print(f"deliveries, shared:      {' / '.join(f'{x:7.1f}' for x in shared)} tasks/s")
        print(f"deliveries, fresh/task:  {fresh:7.1f} tasks/s")
        print(f"shared / fresh = {best_shared / fresh:.1f} (target >= 10); shared / no-op = {best_shared / best_noop:.2f} (target >= 0.5)")
        for label, noop_rate, delivery_rate in lean:
            print(f"diagnosis, {label}: no-op {noop_rate:7.1f} tasks/s, deliveries {delivery_rate:7.1f} tasks/s")


if __name__ == "__main__":
    main()
