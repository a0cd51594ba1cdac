"""What every worker deployable shares: its app, its canary, and how it starts."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Celery, Task

from ragcore import ledger, recovery
from ragcore.celery_app import create_app, define_task
from ragcore.contracts import CANARIES, CanaryArgs, Queue
from ragcore.db import create_schema
from ragcore.settings import get_settings


def create_worker_app(queue: Queue) -> Celery:
    """The app of the worker that consumes `queue` (and only it)."""
    app = create_app(f"worker-{queue.value}", queues=(queue,))
    ledger.connect_worker_signals()
    recovery.connect()

    @define_task(app, CANARIES[queue])
    def canary(self: Task, args: CanaryArgs) -> dict[str, Any]:
        """Proves this worker consumes its queue: answers with who ran it."""
        return {"echo": args.echo, "queue": queue.value, "hostname": socket.gethostname(), "pid": os.getpid()}

    return app


def run_worker(app: Celery, queue: Queue, argv: list[str]) -> None:
    """Start consuming `queue`; extra command-line arguments go to `celery worker`."""
    settings = get_settings()
    create_schema()
    app.worker_main(
        [
            "worker",
            f"--queues={queue.value}",
            f"--hostname={queue.value}@%h",
            f"--concurrency={settings.worker_concurrency.get(queue.value, 1)}",
            f"--loglevel={settings.log_level}",
            *argv,
        ]
    )
