"""When a worker deployable starts tracing: in each pool process, never in a prefork parent.

The Celery instrumentation's own advice: tracing must start after the pool process is made, or the
span processor's thread and the exporter's connections are the parent's (forked, not working).
A pool without processes (solo, threads) runs tasks in the main process, which starts it once ready.
A pool process ends without atexit handlers: it exports what is buffered as it shuts down.
"""

from __future__ import annotations

from typing import Any

from celery import signals
from celery.concurrency.prefork import TaskPool as PreforkPool

from ragcore import tracing


def connect(service: str, console_file: str | None) -> None:
    @signals.worker_process_init.connect(weak=False, dispatch_uid="ragcore.trace_pool_process")
    def _pool_process(**_: Any) -> None:
        tracing.configure(service, console_file)

    @signals.worker_ready.connect(weak=False, dispatch_uid="ragcore.trace_main_process")
    def _main_process(sender: Any, **_: Any) -> None:
        if not isinstance(sender.pool, PreforkPool):
            tracing.configure(service, console_file)

    @signals.worker_process_shutdown.connect(weak=False, dispatch_uid="ragcore.trace_flush")
    def _flush(**_: Any) -> None:
        tracing.shutdown()
