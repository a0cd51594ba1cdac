"""Benchmark: tasks/s of each shipped worker's canary vs a bare Celery app with the same options.

    PYTHONPATH=libs:. python -m tests.benchmarks.worker_overhead [--rounds 5 --tasks 300]
    [--diagnose]

One private Redis, one fresh PostgreSQL database, worker processes with `--concurrency=1` (prefork)
started from their entrypoints: each shipped worker (`python -m services.<queue>.worker`, its
prefetch as shipped) and the bare app (tests.benchmarks.bare_worker) once per prefetch the shipped
workers use. Each shipped worker runs its canary `ragcore.canary.<queue>`, sent as the API sends
tasks (`ragcore.tasks.dispatch`: recorded in the ledger, then published): a trivial task that keeps
its result, so it pays what every such task pays (argument validation, its start and end written to
the ledger, the STARTED and SUCCESS results). The bare app runs a no-op task that keeps its result.
The user canary also runs as another client sends it (`OTHER_CLIENT`: a plain Celery app's
`send_task` in a process that never imports ragcore, so no ledger row and no stamp). Beside each
rate: the CPU time per task of the worker's processes (main and pool), less moved by the machine's
load than a rate.

All workers run throughout with their consumer cancelled; a measurement queues its tasks, re-adds
one worker's consumer and times until the last task's result is stored (one process consumes FIFO),
then cancels the consumer again. Rounds rotate the order, so drift in the machine's load falls on
all. Each shipped worker's ratio is to the bare app with its prefetch, median of per-round ratios.
With `--diagnose`, also the bare app on ragcore's broker transport (what the transport alone
changes), the notifications worker without the ledger's signal receivers, and also without task
events and `track_started` (tests.benchmarks.lean_worker). With `--database sqlite`, the ledger is a
fresh SQLite file (WAL), the embedded default, instead of PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

from ragcore.settings import get_settings
from ragcore.tasks import dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore_dev.processes import Deployable
from tests.benchmarks import bare_worker
from tests.benchmarks.common import Phase, group_cpu_seconds, start_idle_worker, timed_drain
from tests.support.stack import running_stack

TARGET = 0.9

#: Another client publishing: a plain Celery app in a process that never imports ragcore (whose
#: publish hooks would stamp its messages); prints the last id.
OTHER_CLIENT = (
    "import json, sys\n"
    "from celery import Celery\n"
    "o = json.loads(sys.argv[1])\n"
    "app = Celery(broker=o['broker'])\n"
    "for i in range(o['n']):\n"
    "    last = app.send_task(o['name'], kwargs={'echo': str(i)}, queue=o['queue']).id\n"
    "print(last)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=300, help="tasks per measurement")
    parser.add_argument(
        "--diagnose", action="store_true", help="also the worker without the ledger, events"
    )
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    prefetch = get_settings().workers.prefetch
    database_url = None
    if args.database == "sqlite":
        database_url = f"sqlite:///{tempfile.mkdtemp(prefix='ragcore-bench-')}/ragcore.db"

    stack_of_run = running_stack(database_url=database_url) if database_url else running_stack()
    with stack_of_run as stack:
        producer = stack.producer

        def canary(queue: Queue) -> Phase:
            def publish(i: int) -> str:
                return dispatch.send(producer, CANARIES[queue], {"echo": str(i)})

            return Phase(
                f"{queue.value} canary", f"{queue.value}@bench", queue.value, args.tasks, publish
            )

        def bare(multiplier: int) -> Phase:
            def publish(i: int) -> str:
                task_id: str = producer.send_task(
                    bare_worker.TASK, kwargs={"echo": str(i)}, queue=bare_worker.QUEUE
                ).id
                return task_id

            hostname = f"bare-{multiplier}@bench"
            return Phase(
                f"bare, prefetch {multiplier}", hostname, bare_worker.QUEUE, args.tasks, publish
            )

        def other_client(queue: Queue) -> Phase:
            def publish_batch(n: int) -> str:
                options = {
                    "broker": stack.redis.url,
                    "name": CANARIES[queue].name,
                    "queue": queue.value,
                    "n": n,
                }
                done = subprocess.run(
                    [sys.executable, "-c", OTHER_CLIENT, json.dumps(options)],
                    env=stack.env(),
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                )
                return done.stdout.strip().splitlines()[-1]

            plain = canary(queue)
            return Phase(
                f"{queue.value} canary, another client's",
                plain.hostname,
                plain.queue,
                args.tasks,
                plain.publish,
                publish_batch,
            )

        phases: list[Phase] = []
        workers: dict[str, Deployable] = {}  # by hostname
        baseline: dict[str, str] = {}  # a shipped phase -> the bare phase with its prefetch
        for multiplier in sorted({prefetch.get(q.value, 1) for q in Queue}):
            phase = bare(multiplier)
            workers[phase.hostname] = start_idle_worker(
                stack,
                "tests.benchmarks.bare_worker",
                phase.hostname,
                phase.queue,
                f"--prefetch-multiplier={multiplier}",
            )
            phases.append(phase)
        for queue in Queue:
            phase = canary(queue)
            workers[phase.hostname] = start_idle_worker(
                stack, f"services.{queue.value}.worker", phase.hostname, phase.queue
            )
            phases.append(phase)
            baseline[phase.name] = bare(prefetch.get(queue.value, 1)).name
        foreign = other_client(Queue.USER)
        phases.append(foreign)
        baseline[foreign.name] = bare(prefetch.get(Queue.USER.value, 1)).name
        if args.diagnose:
            name, hostname = "bare, prefetch 1, ragcore's transport", "bare-ours@bench"
            workers[hostname] = start_idle_worker(
                stack,
                "tests.benchmarks.bare_worker",
                hostname,
                bare_worker.QUEUE,
                "--prefetch-multiplier=1",
                "--ragcore-transport",
            )
            phases.append(Phase(name, hostname, bare_worker.QUEUE, args.tasks, bare(1).publish))
            baseline[name] = bare(1).name
            notifications = canary(Queue.NOTIFICATIONS)
            for name, hostname, extra in (
                ("notifications canary, no ledger", "lean@bench", ()),
                (
                    "notifications canary, no ledger/events/started",
                    "leaner@bench",
                    ("--no-events",),
                ),
            ):
                workers[hostname] = start_idle_worker(
                    stack, "tests.benchmarks.lean_worker", hostname, notifications.queue, *extra
                )
                phases.append(
                    Phase(name, hostname, notifications.queue, args.tasks, notifications.publish)
                )
                baseline[name] = bare(prefetch.get(Queue.NOTIFICATIONS.value, 1)).name

        def done(_: Phase, last: str) -> bool:
            ready: bool = producer.AsyncResult(last).ready()
            return ready

        for phase in phases:  # warm up: the pool process's imports, connections, pools
            warm_up = Phase(
                "warm-up", phase.hostname, phase.queue, 50, phase.publish, phase.publish_batch
            )
            timed_drain(producer, warm_up, done)
        rates: dict[str, list[float]] = {p.name: [] for p in phases}
        cpu: dict[str, list[float]] = {p.name: [] for p in phases}  # ms per task, main + pool
        for r in range(args.rounds):
            for i in range(len(phases)):
                phase = phases[(r + i) % len(phases)]
                before = group_cpu_seconds(workers[phase.hostname])
                rates[phase.name].append(timed_drain(producer, phase, done))
                spent = group_cpu_seconds(workers[phase.hostname]) - before
                cpu[phase.name].append(spent * 1000 / phase.tasks)

        width = max(len(name) for name in rates)
        for name, values in rates.items():
            line = f"{name:>{width}}: median {statistics.median(values):6.1f} tasks/s"
            if name in baseline:
                # Paired by round: both measured seconds apart, under the same load.
                ratio = statistics.median(
                    s / b for s, b in zip(values, rates[baseline[name]], strict=True)
                )
                verdict = "met" if ratio >= TARGET else "NOT met"
                line += f"   / {baseline[name]}: {ratio:.2f} (target >= {TARGET}: {verdict})"
            line += f"   runs {' '.join(f'{v:.0f}' for v in values)}"
            print(f"{line}   CPU {statistics.median(cpu[name]):.2f} ms/task", flush=True)


if __name__ == "__main__":
    main()
