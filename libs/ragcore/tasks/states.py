"""A task's state: the closed set the ledger stores and the status routes answer (Celery's
names)."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    #: STARTED with progress: shown by status, never stored (the ledger keeps STARTED and the
    #: progress itself; recovery of lost workers looks for STARTED)
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


#: States after which a task never changes again (Celery's READY_STATES).
FINISHED: frozenset[TaskState] = frozenset(
    {TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED}
)
#: Finished by running to its end: revoking it changes nothing.
RAN: frozenset[TaskState] = frozenset({TaskState.SUCCESS, TaskState.FAILURE})
#: Not taken by a worker yet: revoking it ends it at once.
WAITING: frozenset[TaskState] = frozenset({TaskState.PENDING, TaskState.RETRY})
