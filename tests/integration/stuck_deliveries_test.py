"""Waiting deliveries never get stuck: a re-drive is resolved by its outcome, not by its publish,
and a row the re-driver cannot send is set aside while the others go. Real processes: Beat (its
re-driver), the notifications worker, the Users stand-in on 127.0.0.1, Redis and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from ragcore import deliveries
from ragcore.db import session_scope, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries import DeliveryStatus
from ragcore.tasks import contracts, revoking
from ragcore.tasks.contracts import Queue
from ragcore.tasks.states import TaskState
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from tests.support.stack import Stack, ledger_record, running_stack


@dataclass
class Rig:
    stack: Stack
    users: Running[UsersApp]

    def reported(self, message_id: str) -> int:
        return sum(
            d["idempotency_key"] == message_id for d in self.users.app.deliveries("query-results")
        )


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        start_users() as users,
        # Short backoffs: a re-drive's outcome is looked at a few seconds after its publish.
        running_stack(
            users_url=users.url,
            delivery_redrive_base_seconds="2",
            delivery_redrive_max_backoff_seconds="4",
        ) as stack,
    ):
        stack.start("services.beat.main", beat_schedule="{}")
        yield Rig(stack, users)


def _report(message_id: str) -> dict[str, Any]:
    return {
        "user_id": "alice",
        "conversation_id": str(uuid.uuid4()),
        "message_id": message_id,
        "query": "bronze harbor safety",
        "answer": "safe",
        "sources": [],
        "tokens_used": 3,
        "processing_time_ms": 1.5,
    }


def _waiting(
    payload: dict[str, Any],
    task_name: str = contracts.SEND_QUERY_RESULT.name,
    due_ago: timedelta = timedelta(0),
) -> int:
    """A delivery waiting for its re-drive, due `due_ago` ago, as the worker records one."""
    now = utcnow()
    with session_scope() as session:
        row = FailedDelivery(
            task_name=task_name,
            task_id=str(uuid.uuid4()),
            payload=payload,
            error="HTTP 503 from POST users: unavailable",
            attempts=4,
            status=DeliveryStatus.WAITING,
            next_attempt_at=now - due_ago,
            waiting_since=now - due_ago,
        )
        session.add(row)
        session.flush()
        return row.id


def _row(delivery_id: int) -> FailedDelivery:
    with session_scope() as session:
        row = session.get(FailedDelivery, delivery_id)
        assert row is not None
        session.expunge(row)
        return row


def test_a_redrive_that_never_completes_is_sent_again_until_one_delivers(rig: Rig) -> None:
    message_id = str(uuid.uuid4())
    delivery = _waiting(_report(message_id))
    # No notifications worker yet: the first re-drive waits in the queue.
    # Beat starts slowly on a loaded machine: a generous deadline.
    first = wait_until(lambda: _row(delivery).redrive_task_id, 180, "the first re-drive")
    # Revoked before any worker took it: this re-drive will never deliver.
    with session_scope() as session:
        revoked = revoking.revoke(
            session, rig.stack.producer, rig.stack.redis_client(), first, terminate=False
        )
    assert revoked.status == TaskState.REVOKED
    worker = rig.stack.start_worker(Queue.NOTIFICATIONS)
    try:
        wait_until(lambda: rig.reported(message_id) > 0, 120, "the report at Users")

        def resolved() -> FailedDelivery | None:
            row = _row(delivery)
            return row if row.status == DeliveryStatus.REDRIVEN else None

        row = wait_until(resolved, 60, "the delivery resolved by its re-drive's success")
        assert row.redrive_task_id is not None and row.redrive_task_id != first
        assert ledger_record(row.redrive_task_id, TaskState.SUCCESS).state == TaskState.SUCCESS
        assert ledger_record(first, TaskState.REVOKED).state == TaskState.REVOKED
        assert rig.reported(message_id) == 1
    finally:
        worker.stop()


def test_a_row_that_cannot_be_sent_is_set_aside_and_the_others_go(rig: Rig) -> None:
    # Due before the good one, so each round meets them first.
    invalid = _waiting({"message_id": "no other field"}, due_ago=timedelta(minutes=5))
    renamed = _waiting(_report(str(uuid.uuid4())), "send_query_result_v0", timedelta(minutes=5))
    message_id = str(uuid.uuid4())
    good = _waiting(_report(message_id))
    worker = rig.stack.start_worker(Queue.NOTIFICATIONS)
    try:
        wait_until(lambda: rig.reported(message_id) > 0, 120, "the good report at Users")
        wait_until(
            lambda: _row(good).status == DeliveryStatus.REDRIVEN, 60, "the good row resolved"
        )
    finally:
        worker.stop()
    bad, gone = _row(invalid), _row(renamed)
    assert (bad.status, gone.status) == (DeliveryStatus.FAILED, DeliveryStatus.FAILED)
    assert bad.next_attempt_at is None and gone.next_attempt_at is None
    assert "no longer validates" in bad.error and "user_id" in bad.error
    assert "send_query_result_v0" in gone.error and "no delivery contract" in gone.error
    with session_scope() as session:
        listed, _ = deliveries.page(session, DeliveryStatus.FAILED, 100, 0)
        assert {invalid, renamed} <= {r.id for r in listed}  # the admin route's list
        assert deliveries.failed_count(session, contracts.USERS) == 1  # /metrics (the invalid one)
