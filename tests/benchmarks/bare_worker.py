"""A bare Celery app with the shipped workers' options and a no-op task that keeps a result
(the worker-overhead baseline; benchmark only).

    PYTHONPATH=libs:. python -m tests.benchmarks.bare_worker --concurrency=1 --prefetch-multiplier=N

Consumes the `bare` queue of the same broker and result backend as ragcore's deployables, with the
options `ragcore.tasks.app.create_app` sets that touch a task's path (acks_late, task events,
track_started, extended results, JSON), and nothing of ragcore's: no ledger, no monitor thread, no
recovery notes, no argument validation, no JSON logging. With `--ragcore-transport`, on ragcore's
broker transport (ragcore.deadletters.transport) instead of kombu's: what the transport alone
changes.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from celery import Celery

from ragcore.deadletters import transport_for
from ragcore.settings import get_settings

QUEUE = "bare"
TASK = "bench.bare_noop"

_settings = get_settings()
app = Celery("bare", set_as_current=True)
app.conf.update(
    broker_url=_settings.redis.broker,
    result_backend=_settings.redis.result_backend,
    broker_transport_options={"visibility_timeout": _settings.redis.visibility_timeout_seconds},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_extended=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_track_started=True,
    worker_send_task_events=True,
    task_default_queue=QUEUE,
)


@app.task(name=TASK)
def bare_noop(echo: str = "") -> dict[str, Any]:
    """What the canary answers, without anything around it."""
    return {"echo": echo, "queue": QUEUE, "hostname": socket.gethostname(), "pid": os.getpid()}


if "--ragcore-transport" in sys.argv:
    sys.argv.remove("--ragcore-transport")
    app.conf.broker_transport = transport_for(_settings.redis.broker)


def main() -> None:
    # WARNING: no per-task INFO lines, as ragcore's workers by default (RAGCORE_LOG_TASK_LIFECYCLE).
    app.worker_main(["--quiet", "worker", f"--queues={QUEUE}", "--loglevel=WARNING", *sys.argv[1:]])


if __name__ == "__main__":
    main()
