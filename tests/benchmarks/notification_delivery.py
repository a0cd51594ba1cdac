"""Benchmark: notification deliveries/s of one worker process against the Users stand-in.

    PYTHONPATH=libs:. python -m tests.benchmarks.notification_delivery [--rounds 5 --tasks 400
    --fresh-tasks 80] [--diagnose]

Worker processes (`--concurrency=1`) started from entrypoints, a private Redis, a fresh PostgreSQL
database (the task ledger, kept by each worker as deployed), the Users stand-in in this process.
Measured in the same run, in rounds whose order rotates (so drift in the machine's load falls on
all):

- no-op:   the shipped worker's canary task (validation, ledger, result; no HTTP) — its ceiling;
- shared:  `send_query_result_to_users` on the shipped worker, one httpx client per process;
- fresh:   the same task from the same entrypoint with a new httpx client per task (the baseline,
           tests.benchmarks.fresh_client_worker), in a second worker process.

With `--diagnose`, also no-op and deliveries of the worker without parts of its per-task
bookkeeping (tests.benchmarks.lean_worker): what a delivery costs beside them.

All workers run throughout with their consumer cancelled; a measurement queues its tasks, re-adds
one worker's consumer, and times until the last canary's result is stored (one process consumes
FIFO, so the last is last) or until Users has recorded every delivery (a delivery keeps no result
in Redis, the ledger has it), then cancels the consumer again.
"""

from __future__ import annotations

import argparse
import statistics
import uuid

from ragcore.tasks.contracts import CANARIES, SEND_QUERY_RESULT, Queue
from ragcore_dev.standins.users import start_users
from tests.benchmarks.common import Phase, start_idle_worker, timed_drain
from tests.support.stack import running_stack

QUEUE = Queue.NOTIFICATIONS.value


def report(i: int) -> dict[str, object]:
    return {
        "user_id": f"user-{i % 50}",
        "conversation_id": f"conv-{i}",
        "message_id": str(uuid.uuid4()),
        "query": "glacier harbor safety",
        "answer": "Glacier and harbor: safety. [1]",
        "sources": [
            {
                "document_id": "doc-1",
                "chunk_id": "doc-1/chunk-003",
                "score": 0.81,
                "text": "Glacier and harbor: safety.",
                "metadata": {},
            }
        ],
        "tokens_used": 9,
        "processing_time_ms": 12.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tasks", type=int, default=400, help="tasks per no-op and shared-client measurement"
    )
    parser.add_argument(
        "--fresh-tasks", type=int, default=80, help="tasks per new-client-per-task measurement"
    )
    parser.add_argument(
        "--diagnose", action="store_true", help="also measure the worker without the ledger, events"
    )
    args = parser.parse_args()

    with start_users() as users, running_stack(users_url=users.url) as stack:
        producer = stack.producer

        def canary(i: int) -> str:
            echo = {"echo": str(i)}
            task_id: str = producer.send_task(
                CANARIES[Queue.NOTIFICATIONS].name, kwargs=echo, queue=QUEUE
            ).id
            return task_id

        def delivery(i: int) -> str:
            task_id: str = producer.send_task(
                SEND_QUERY_RESULT.name, kwargs=report(i), queue=QUEUE
            ).id
            return task_id

        sent = 0

        def done(phase: Phase, last: str) -> bool:
            # A canary's result is stored; a delivery keeps none (the ledger has it): Users counts
            # those.
            if phase.publish is canary:
                ready: bool = producer.AsyncResult(last).ready()
                return ready
            return users.app.count("query-results") >= sent

        start_idle_worker(stack, "services.notifications.worker", "shared@bench", QUEUE)
        start_idle_worker(stack, "tests.benchmarks.fresh_client_worker", "fresh@bench", QUEUE)
        phases = [
            Phase("no-op", "shared@bench", QUEUE, args.tasks, canary),
            Phase("shared", "shared@bench", QUEUE, args.tasks, delivery),
            Phase("fresh", "fresh@bench", QUEUE, args.fresh_tasks, delivery),
        ]
        if args.diagnose:
            start_idle_worker(stack, "tests.benchmarks.lean_worker", "lean@bench", QUEUE)
            start_idle_worker(
                stack, "tests.benchmarks.lean_worker", "leaner@bench", QUEUE, "--no-events"
            )
            phases += [
                Phase("no-op, no ledger", "lean@bench", QUEUE, args.tasks, canary),
                Phase("shared, no ledger", "lean@bench", QUEUE, args.tasks, delivery),
                Phase("no-op, no ledger/events/started", "leaner@bench", QUEUE, args.tasks, canary),
                Phase(
                    "shared, no ledger/events/started", "leaner@bench", QUEUE, args.tasks, delivery
                ),
            ]
        # warm up: the child's client, pools, imports
        for hostname in sorted({p.hostname for p in phases}):
            sent += 50
            timed_drain(producer, Phase("warm-up", hostname, QUEUE, 50, delivery), done)
        rates: dict[str, list[float]] = {p.name: [] for p in phases}
        for r in range(args.rounds):
            for i in range(len(phases)):
                phase = phases[(r + i) % len(phases)]
                sent += phase.tasks if phase.publish is delivery else 0
                rates[phase.name].append(timed_drain(producer, phase, done))

        delivered = len(users.app.deliveries("query-results"))
        assert delivered == sent, f"Users recorded {delivered} deliveries, {sent} were sent"
        print(
            f"deliveries recorded by Users: {delivered} of {sent} sent; "
            f"duplicates: {users.app.duplicates['query-results']}"
        )
        for name, values in rates.items():
            print(
                f"{name:>34}: median {statistics.median(values):7.1f} tasks/s   "
                f"runs {' '.join(f'{v:.0f}' for v in values)}"
            )
        median = {name: statistics.median(values) for name, values in rates.items()}
        # Paired by round: both measured minutes apart at most, under the same load.
        per_round = statistics.median(
            s / f for s, f in zip(rates["shared"], rates["fresh"], strict=False)
        )
        print(
            f"shared / fresh = {median['shared'] / median['fresh']:.1f} "
            f"(median per round {per_round:.1f}; target >= 10)"
        )
        print(f"shared / no-op = {median['shared'] / median['no-op']:.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
