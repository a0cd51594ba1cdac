"""The notifications worker minus parts of its per-task bookkeeping (benchmark diagnosis only).

    PYTHONPATH=libs:. python -m tests.benchmarks.lean_worker [--no-events] --concurrency=1

Without the task ledger's signal receivers (two updates per task, queued to the ledger writer); with
`--no-events` also without task events and `task_track_started`. Shows what a delivery costs beside
them.
"""

from __future__ import annotations

import sys

from celery import signals

from services.notifications import worker

for signal, uid in (
    (signals.task_prerun, "ledger.task_prerun"),
    (signals.task_success, "ledger.task_success"),
    (signals.task_retry, "ledger.task_retry"),
    (signals.task_failure, "ledger.task_failure"),
):
    signal.disconnect(dispatch_uid=uid)

if "--no-events" in sys.argv:
    sys.argv.remove("--no-events")
    worker.app.conf.worker_send_task_events = False
    worker.app.conf.task_track_started = False

if __name__ == "__main__":
    worker.main()
