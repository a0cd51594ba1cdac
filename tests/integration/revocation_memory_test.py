"""A revocation lasts as long as the ledger keeps it, not as long as a worker's memory (Celery
forgets a revoked id `REVOKE_EXPIRES` after it learnt it, 3 h by default). Real processes: the
notifications worker from its entrypoint, the Users stand-in, Redis and PostgreSQL.
"""

from __future__ import annotations

import time
import uuid

import pytest

from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts, revoking
from ragcore.tasks.contracts import Queue
from ragcore.tasks.states import TaskState
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.users import start_users
from tests.support.stack import running_stack

#: How long the worker remembers a revoked id here: Celery's own setting (its environment variable).
REMEMBERS_SECONDS = 2


def test_an_id_revoked_before_it_was_sent_never_runs_after_the_worker_forgot_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with start_users() as users, running_stack(users_url=users.url) as stack:
        task_id = str(uuid.uuid4())
        with session_scope() as session:
            revoked = revoking.revoke(
                session, stack.producer, stack.redis_client(), task_id, terminate=False
            )
        assert (revoked.seen, revoked.status) == (False, TaskState.REVOKED)
        # A later revocation: the feed the worker polls then starts after this one, and will not
        # hand it back once the worker forgot it.
        with session_scope() as session:
            revoking.revoke(
                session, stack.producer, stack.redis_client(), str(uuid.uuid4()), terminate=False
            )
        monkeypatch.setenv("CELERY_WORKER_REVOKE_EXPIRES", str(REMEMBERS_SECONDS))
        stack.start_worker(Queue.NOTIFICATIONS, name="forgetful")
        inspect = stack.producer.control.inspect(destination=["forgetful@test"], timeout=5)

        def remembered() -> bool:
            return task_id in (inspect.revoked() or {}).get("forgetful@test", [])

        assert wait_until(remembered, 30, "the revocation loaded from the ledger")
        deadline = time.monotonic() + REMEMBERS_SECONDS
        wait_until(lambda: time.monotonic() > deadline, REMEMBERS_SECONDS + 5, "expiry")
        # A peer's greeting makes Celery drop the ids it remembered too long (its mingle purge):
        # from here the worker's memory no longer holds the revocation.
        inspect.hello("peer@test", {})
        assert not remembered()

        # Sent now by another client, under the revoked id.
        stack.producer.send_task(
            contracts.SEND_SYSTEM_NOTIFICATION.name,
            kwargs={"notification_type": "t", "title": "t", "message": "m", "user_ids": ["u"]},
            task_id=task_id,
            queue=Queue.NOTIFICATIONS.value,
        )

        def discarded() -> TaskRecord | None:
            with session_scope() as session:
                row = session.get(TaskRecord, task_id)
            return row if row is not None and row.name is not None else None

        row = wait_until(discarded, 60, "the worker to discard the task and name it")
        assert (row.state, row.name, row.queue) == (
            TaskState.REVOKED,
            contracts.SEND_SYSTEM_NOTIFICATION.name,
            Queue.NOTIFICATIONS.value,
        )
        assert row.started_at is None
        # Celery's own record says so too (what the status route reads first).
        assert wait_until(
            lambda: stack.producer.AsyncResult(task_id).state == TaskState.REVOKED,
            30,
            "REVOKED in the result backend",
        )
        assert users.app.deliveries("notifications") == []
