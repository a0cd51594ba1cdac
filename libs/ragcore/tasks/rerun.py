"""Running a finished task again: a new task with the same arguments, linked to its first run.

The link is the new task's id, `<first run's id>.again.<n>`, so it needs no column: a run again
names its first run, and the first run finds its runs again by primary-key lookups (no scan of the
ledger). Ids stay within the 64 characters a task id may have; a first run whose id leaves no room
for the suffix is run again under a fresh id, unlinked.
"""

from __future__ import annotations

import re
import uuid

from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.states import FINISHED

#: How many runs again of one task are linked (found by lookup) before new ones go unlinked.
MAX_LINKED = 100
_MAX_ID = 64
_AGAIN = re.compile(r"^(?P<first>.+)\.again\.(?P<n>[1-9][0-9]{0,2})$")


class CannotRunAgain(ValueError):
    """The task is unknown to the contracts, or not finished."""


def first_run(task_id: str) -> str | None:
    """The id of the task this one runs again, or None for a first run."""
    match = _AGAIN.match(task_id)
    return match["first"] if match else None


def _candidates(first: str) -> list[str]:
    if len(f"{first}.again.{MAX_LINKED}") > _MAX_ID:
        return []
    return [f"{first}.again.{n}" for n in range(1, MAX_LINKED + 1)]


def runs_again(session: Session, task_id: str) -> list[str]:
    """The ids of the runs again of `task_id`'s first run, oldest first (primary-key lookups)."""
    first = first_run(task_id) or task_id
    candidates = _candidates(first)
    if not candidates:
        return []
    found = set(
        session.scalars(select(TaskRecord.task_id).where(TaskRecord.task_id.in_(candidates)))
    )
    return [c for c in candidates if c in found]


def run_again(celery: Celery, session: Session, record: TaskRecord) -> str:
    """Send a finished task again with the arguments it was sent with; the new task's id."""
    contract = contracts.BY_NAME.get(record.name or "")
    if contract is None:
        raise CannotRunAgain(f"task {record.task_id} is of no task contract ({record.name!r})")
    if record.state not in FINISHED:
        raise CannotRunAgain(
            f"task {record.task_id} is {record.state}: only a finished task runs again"
        )
    first = first_run(record.task_id) or record.task_id
    taken = set(runs_again(session, first))
    for candidate in _candidates(first):
        if candidate in taken:
            continue
        try:
            return dispatch.send(celery, contract, record.kwargs, task_id=candidate)
        except IntegrityError:  # another operator took this number a moment ago: take the next
            continue
    return dispatch.send(celery, contract, record.kwargs, task_id=str(uuid.uuid4()))
