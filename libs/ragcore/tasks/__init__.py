"""Celery plumbing every deployable shares: the task contracts, the app factory, sending by name,
the ledger, a task's merged status and the periodic locks."""

from ragcore.tasks import contracts, dispatch, ledger, locks, status
from ragcore.tasks.app import PermanentTaskError, create_app, define_task
from ragcore.tasks.contracts import Queue, TaskContract
from ragcore.tasks.dispatch import PublishFailed

__all__ = [
    "PermanentTaskError",
    "PublishFailed",
    "Queue",
    "TaskContract",
    "contracts",
    "create_app",
    "define_task",
    "dispatch",
    "ledger",
    "locks",
    "status",
]
