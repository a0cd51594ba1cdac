"""The ledger's rows: a task recorded when sent (or when a worker receives another client's), read
back by id."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ragcore.broker import depths
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts
from ragcore.tasks.contracts import TaskContract
from ragcore.tasks.ledger.writer import Writer
from ragcore.tasks.states import TaskState

#: A message header of publishers that recorded their tasks themselves (the publisher signal skips
#: them).
RECORDED_HEADER = "ragcore_recorded"
#: A message header of a publish the ledger could not record (the database was down): the worker
#: that receives it records it, as it does another client's task.
UNRECORDED_HEADER = "ragcore_unrecorded"


def record_sent(
    session: Session, task_id: str, contract: TaskContract, kwargs: dict[str, Any]
) -> None:
    session.add(
        TaskRecord(
            task_id=task_id,
            name=contract.name,
            queue=contract.queue.value,
            state=TaskState.PENDING,
            kwargs=kwargs,
        )
    )


def insert_new(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert ledger rows; an id already recorded is kept as it is."""
    session.execute(_insert_new(session.get_bind().dialect.name), rows)


@lru_cache(maxsize=2)
def _insert_new(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(TaskRecord).on_conflict_do_nothing(index_elements=["task_id"])


def record_sent_many(
    session: Session, tasks: Sequence[tuple[str, TaskContract, dict[str, Any]]]
) -> None:
    """Record tasks about to be sent in one statement; an id already recorded (sent again) is kept
    as it is."""
    insert_new(
        session,
        [
            {
                "task_id": task_id,
                "name": c.name,
                "queue": c.queue.value,
                "state": TaskState.PENDING,
                "kwargs": kwargs,
            }
            for task_id, c, kwargs in tasks
        ],
    )


def get(session: Session, task_id: str) -> TaskRecord | None:
    return session.get(TaskRecord, task_id)


def identity(name: str, delivery_info: dict[str, Any] | None) -> dict[str, str]:
    """Name and queue of a task a worker holds: the contract's queue, else the one it came from."""
    contract = contracts.BY_NAME.get(name)
    queue = (
        contract.queue.value if contract else str((delivery_info or {}).get("routing_key") or "")
    )
    # the columns' sizes: another client may send anything
    return {
        "name": name[:128],
        "queue": queue[:32],
    }


def record_received(request: Any) -> None:
    """Record a task that another client sent (Celery's CLI, Flower, a script) when a worker
    receives it.

    Ragcore's publishers record their tasks when they send them and stamp the message; an unstamped
    message is another client's. Its row goes through the main process's batched writer (the
    consumer's loop waits on no database): the pool process that starts the task may come first,
    and records the row itself (`ledger.claim_start`), so this insert keeps whatever it finds.
    """
    stamped = request.request_dict.get(depths.SENT_AT_HEADER) is not None
    if stamped and not request.request_dict.get(UNRECORDED_HEADER):
        return
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    row = {
        "task_id": request.id,
        "state": TaskState.PENDING,
        "kwargs": kwargs,
        **identity(request.name, request.delivery_info),
    }
    _received.put(request.id, row)


def _insert_received(rows: list[tuple[str, dict[str, Any]]]) -> None:
    with session_scope() as session:
        insert_new(session, [{"task_id": task_id, **row} for task_id, row in rows])


#: The rows of other clients' tasks a worker's main process received, written in batches.
_received = Writer(write_batch=_insert_received)
