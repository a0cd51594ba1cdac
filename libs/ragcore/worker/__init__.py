"""What runs inside a worker process beside its tasks: the entrypoint, recovery of a dead worker's
tasks, and the consuming-health verdict behind the liveness probe."""

from ragcore.worker import health, recovery
from ragcore.worker.runtime import create_worker_app, healthcheck, run_worker

__all__ = ["create_worker_app", "health", "healthcheck", "recovery", "run_worker"]
