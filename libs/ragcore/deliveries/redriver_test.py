"""The re-driver's round: one statement when nothing waits, the whole round when something does."""

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import event, select

from ragcore.db import Sessions, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries.redriver import redrive_due
from ragcore.deliveries.status import DeliveryStatus
from ragcore.settings import Settings


@pytest.fixture
def statements(sessions: Sessions) -> Iterator[list[str]]:
    """The SQL statements the sessions run."""
    seen: list[str] = []
    with sessions() as session:
        engine = session.get_bind()

    def record(conn, cursor, statement, *_):  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def add(sessions: Sessions, status: DeliveryStatus, **fields: Any) -> None:
    """A failed delivery of a task that no delivery contract names."""
    with sessions() as session:
        session.add(
            FailedDelivery(
                task_name="renamed_task",
                task_id="t-0",
                payload={},
                error="e",
                attempts=1,
                status=status,
                **fields,
            )
        )


def test_a_round_with_nothing_waiting_is_one_select(
    sessions: Sessions, statements: list[str]
) -> None:
    add(sessions, DeliveryStatus.FAILED)  # resolved: not looked at again
    statements.clear()
    assert redrive_due(Celery("redriver-test"), Settings(), sessions=sessions) == 0
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")


def test_a_waiting_row_gets_the_whole_round(sessions: Sessions, statements: list[str]) -> None:
    add(sessions, DeliveryStatus.WAITING, next_attempt_at=utcnow(), waiting_since=utcnow())
    # Its task has no delivery contract: the round sets it aside before any neighbour is asked.
    redrive_due(Celery("redriver-test"), Settings(), sessions=sessions)
    with sessions() as session:
        row = session.scalars(select(FailedDelivery)).one()
        assert row.status == DeliveryStatus.FAILED
        assert "no delivery contract" in row.error
