"""The notifications worker minus parts of its per-task bookkeeping (benchmark diagnosis only).

    PYTHONPATH=libs:. python -m tests.benchmarks.lean_worker [--no-events] --concurrency=1

Without the task ledger: no start claimed against a revocation, none of the ledger's signal
receivers (so no end written); with `--no-events` also without task events and
`task_track_started`. Shows what a task costs beside them.
"""

from __future__ import annotations

import sys
from typing import Any

from celery import signals

from ragcore.tasks import ledger
from services.notifications import worker

for signal, uid in (
    (signals.task_prerun, "ledger.task_prerun"),
    (signals.task_success, "ledger.task_success"),
    (signals.task_retry, "ledger.task_retry"),
    (signals.task_failure, "ledger.task_failure"),
):
    signal.disconnect(dispatch_uid=uid)


def _no_claim(
    task_id: str, worker: str | None, name: str, queue: str, kwargs: dict[str, Any]
) -> bool:
    return True


# `define_task` calls it through the module at each task.
ledger.claim_start = _no_claim

if "--no-events" in sys.argv:
    sys.argv.remove("--no-events")
    worker.app.conf.worker_send_task_events = False
    worker.app.conf.task_track_started = False

if __name__ == "__main__":
    worker.main()
