"""What every worker deployable shares: its app, its canary, and how it starts (its main-process
companion, the heartbeat and notes, is `ragcore.worker.monitor`)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import time
from typing import Any

from celery import Celery, Task
from celery.utils.nodenames import host_format

from ragcore import invariants, tracing
from ragcore.broker import broker_client
from ragcore.deadletters import consumer as dead_letters
from ragcore.logs import configure_logging
from ragcore.settings import get_settings
from ragcore.tasks import ledger
from ragcore.tasks.app import PermanentTaskError, app_settings, create_app, define_task
from ragcore.tasks.arguments import CanaryArgs
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore.worker import health, reconnect, recovery
from ragcore.worker.monitor import Monitor, connect_monitor

log = logging.getLogger(__name__)


def create_worker_app(queue: Queue) -> Celery:
    """The app of the worker that consumes `queue` (and only it)."""
    app = create_app(f"worker-{queue.value}", queues=(queue,))
    # Celery's consumer, its poison hooks storing dead letters (a path: conf is shown by `inspect`).
    app.conf.worker_consumer = (
        f"{dead_letters.Consumer.__module__}:{dead_letters.Consumer.__name__}"
    )
    dead_letters.connect()
    ledger.connect_worker_signals()
    recovery.connect()
    reconnect.connect(app)
    connect_monitor(Monitor(queue, app_settings(app)))
    define_canary(app, queue)
    return app


def define_canary(app: Celery, queue: Queue) -> Task:
    """Register `queue`'s canary on `app`: it proves the worker consumes its queue."""

    @define_task(app, CANARIES[queue])
    def canary(self: Task, args: CanaryArgs) -> dict[str, Any]:
        """Proves this worker consumes its queue: answers with who ran it."""
        if args.sleep_seconds:
            steps = max(1, math.ceil(args.sleep_seconds / 0.25))
            ledger.report_progress(self, 0, steps)
            for done in range(1, steps + 1):
                time.sleep(args.sleep_seconds / steps)
                ledger.report_progress(self, done, steps)
        if args.fail:
            raise PermanentTaskError("the canary was asked to fail")
        return {
            "echo": args.echo,
            "queue": queue.value,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }

    return canary


def run_worker(app: Celery, queue: Queue, argv: list[str]) -> None:
    """Start consuming `queue`; extra command-line arguments go to `celery worker`.

    `--healthcheck [--hostname=NAME]` instead checks that the worker NAME (default: this host's
    worker
    of `queue`) is consuming, and exits 0 if so, 1 if not: each worker image's liveness probe.
    `--help` prints this and Celery's worker options, touching neither Redis nor the database.
    """
    if "--help" in argv:
        print(
            f"usage: worker [--healthcheck [--hostname=NAME]] [CELERY WORKER OPTIONS]\n\n"
            f"Consumes the {queue.value} queue; "
            "--healthcheck instead exits 0 while the worker NAME consumes it.\n"
            "Configured by RAGCORE_* environment variables. Celery's worker options follow.\n",
            flush=True,
        )
        app.worker_main(["worker", "--help"])
        return
    settings = get_settings()  # an entrypoint: each services/<queue>/worker.py's main
    configure_logging(f"worker-{queue.value}", settings.log_level, settings.log_task_lifecycle)
    if tracing.exporters():
        from ragcore.tracing import worker_signals

        worker_signals.connect(f"worker-{queue.value}", settings.trace_file)
    if "--healthcheck" in argv:
        sys.exit(healthcheck(app, queue, argv))
    try:
        invariants.check(settings, broker_client(settings.redis), service=f"worker {queue.value}")
    except invariants.InvariantError as exc:
        log.critical("%s", exc)
        sys.exit(str(exc))
    app.worker_main(
        [
            "--quiet",  # no banner on stdout: every line a deployable writes is JSON
            "worker",
            f"--queues={queue.value}",
            f"--hostname={queue.value}@%h",
            f"--concurrency={settings.workers.concurrency.get(queue.value, 1)}",
            f"--prefetch-multiplier={settings.workers.prefetch.get(queue.value, 1)}",
            f"--loglevel={settings.log_level}",
            *argv,
        ]
    )


def healthcheck(app: Celery, queue: Queue, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="worker --healthcheck")
    parser.add_argument("--healthcheck", action="store_true")
    parser.add_argument("-n", "--hostname", default=f"{queue.value}@%h")
    options, _ = parser.parse_known_args(argv)
    hostname = host_format(options.hostname)
    try:
        verdict = health.check(app, app_settings(app), hostname, queue.value)
    except Exception as exc:  # the broker is unreachable: this worker cannot consume either
        verdict = health.Health(False, f"check failed: {type(exc).__name__}: {exc}")
    # A JSON line like every other line a deployable writes (the orchestrator keeps it with the
    # probe).
    log.log(
        logging.INFO if verdict.healthy else logging.ERROR,
        "%s: %s: %s",
        hostname,
        "healthy" if verdict.healthy else "UNHEALTHY",
        verdict.reason,
    )
    return 0 if verdict.healthy else 1
