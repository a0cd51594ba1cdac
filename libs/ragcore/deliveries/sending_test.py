from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlalchemy import select

from ragcore.clients.breaker import BreakerOpen
from ragcore.db import utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries import sending
from ragcore.deliveries.redriver import REDRIVE_HEADER
from ragcore.deliveries.sending import DeliveryDeferred
from ragcore.tasks.app import PermanentTaskError
from ragcore.tasks.contracts import SEND_QUERY_RESULT


class Gate:
    """A closed breaker, or an open one that lets nothing through (the real one needs Redis)."""

    neighbour = "users"

    def __init__(self, open_: bool = False) -> None:
        self.open = open_

    def call(self, send: Callable[[], Any], token: str | None = None) -> tuple[Any, bool]:
        if self.open:
            raise BreakerOpen(self.neighbour)
        return send(), False


def deliver(
    t: SimpleNamespace,
    contract: Any,
    payload: dict[str, Any],
    send: Callable[[], Any],
    sessions: Any,
    gate: Gate | None = None,
) -> Any:
    return sending.deliver(t, contract, payload, send, sessions, gate or Gate())  # type: ignore[arg-type]


APP = Celery("sending-test", set_as_current=False)


def task(retries: int, task_id: str = "t-1", **headers: Any) -> SimpleNamespace:
    # An app not made by create_app: the task reads the process's settings.
    return SimpleNamespace(app=APP, request=SimpleNamespace(id=task_id, retries=retries, **headers))


def answering(status: int):  # type: ignore[no-untyped-def]
    def send() -> int:
        request = httpx.Request("POST", "http://users.test/api/v1/rag/query-results")
        raise httpx.HTTPStatusError(
            "refused",
            request=request,
            response=httpx.Response(status, text="bad field", request=request),
        )

    return send


def recorded(sessions) -> list[FailedDelivery]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return list(session.scalars(select(FailedDelivery)))


def test_a_4xx_is_recorded_at_once_with_payload_error_and_attempts(sessions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(httpx.HTTPStatusError):
        deliver(task(0), SEND_QUERY_RESULT, {"message_id": "m"}, answering(400), sessions)
    [row] = recorded(sessions)
    assert (row.task_name, row.task_id, row.payload, row.attempts, row.status) == (
        "send_query_result_to_users",
        "t-1",
        {"message_id": "m"},
        1,
        "failed",
    )
    assert "400" in row.error and "bad field" in row.error


def test_a_5xx_with_retries_left_is_not_recorded(sessions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(httpx.HTTPStatusError):
        deliver(task(2), SEND_QUERY_RESULT, {}, answering(503), sessions)
    assert recorded(sessions) == []


def test_a_5xx_that_exhausts_the_retries_waits_for_a_redrive_recorded_once(sessions) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):  # the same task id twice: a redelivered message
        with pytest.raises(DeliveryDeferred):
            deliver(task(3), SEND_QUERY_RESULT, {}, answering(503), sessions)
    [row] = recorded(sessions)
    assert (row.attempts, row.status) == (4, "waiting")
    assert row.waiting_since is not None and row.next_attempt_at == row.waiting_since + timedelta(
        seconds=30
    )


@pytest.mark.parametrize("status", [408, 429])
def test_a_408_or_429_is_retried_like_a_5xx(sessions, status: int) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(httpx.HTTPStatusError):  # quick retries left: re-raised for define_task
        deliver(task(0), SEND_QUERY_RESULT, {}, answering(status), sessions)
    with pytest.raises(DeliveryDeferred):
        deliver(task(3), SEND_QUERY_RESULT, {}, answering(status), sessions)
    assert [r.status for r in recorded(sessions)] == ["waiting"]


def test_an_open_breaker_makes_a_delivery_wait_at_once_without_quick_retries(sessions) -> None:  # type: ignore[no-untyped-def]
    sent = []
    with pytest.raises(DeliveryDeferred):
        deliver(
            task(0),
            SEND_QUERY_RESULT,
            {"message_id": "m"},
            lambda: sent.append(1),
            sessions,
            Gate(open_=True),
        )
    assert sent == []
    [row] = recorded(sessions)
    assert (row.status, row.attempts, row.payload) == ("waiting", 1, {"message_id": "m"})
    assert "circuit breaker of users is open" in row.error


def _redriven(sessions, waited: timedelta) -> FailedDelivery:  # type: ignore[no-untyped-def]
    """A row re-driven as t-2, waiting for that re-drive's outcome."""
    now = utcnow()
    with sessions() as session:
        row = FailedDelivery(
            task_name=SEND_QUERY_RESULT.name,
            task_id="t-1",
            payload={},
            error="x",
            attempts=4,
            status="waiting",
            redrive_task_id="t-2",
            waiting_since=now - waited,
            created_at=now - waited,
        )
        session.add(row)
        session.flush()
        session.expunge(row)
    return row


def test_a_redrive_that_fails_again_waits_again_as_long_as_it_has_waited(sessions) -> None:  # type: ignore[no-untyped-def]
    row = _redriven(sessions, timedelta(minutes=10))
    with pytest.raises(DeliveryDeferred):  # one attempt: no quick retries for a re-drive
        deliver(
            task(0, "t-2", **{REDRIVE_HEADER: row.id}),
            SEND_QUERY_RESULT,
            {},
            answering(503),
            sessions,
        )
    [again] = recorded(sessions)
    assert (again.status, again.attempts) == ("waiting", 5)
    assert again.next_attempt_at is not None
    due_in = again.next_attempt_at - utcnow()
    assert timedelta(minutes=9) < due_in <= timedelta(minutes=10, seconds=5)


def test_a_redrive_refused_or_out_of_its_window_fails_for_an_operator(sessions) -> None:  # type: ignore[no-untyped-def]
    refused = _redriven(sessions, timedelta(minutes=1))
    with pytest.raises(PermanentTaskError):
        deliver(
            task(0, "t-2", **{REDRIVE_HEADER: refused.id}),
            SEND_QUERY_RESULT,
            {},
            answering(400),
            sessions,
        )
    expired = _redriven(sessions, timedelta(days=2))
    with pytest.raises(PermanentTaskError):
        deliver(
            task(0, "t-2", **{REDRIVE_HEADER: expired.id}),
            SEND_QUERY_RESULT,
            {},
            answering(503),
            sessions,
        )
    assert [(r.status, r.next_attempt_at) for r in recorded(sessions)] == [
        ("failed", None),
        ("failed", None),
    ]


def test_a_redrive_that_delivers_resolves_its_row(sessions) -> None:  # type: ignore[no-untyped-def]
    row = _redriven(sessions, timedelta(minutes=1))
    redrive = task(0, "t-2", **{REDRIVE_HEADER: row.id})
    deliver(redrive, SEND_QUERY_RESULT, {}, lambda: 201, sessions)
    assert [(r.status, r.next_attempt_at) for r in recorded(sessions)] == [("redriven", None)]


def test_a_success_returns_the_senders_value(sessions) -> None:  # type: ignore[no-untyped-def]
    assert deliver(task(0), SEND_QUERY_RESULT, {}, lambda: 201, sessions) == 201
    assert recorded(sessions) == []
