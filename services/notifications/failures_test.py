from types import SimpleNamespace

import httpx
import pytest
from ragcore.tasks.contracts import SEND_QUERY_RESULT
from ragcore.db.models import FailedDelivery
from sqlalchemy import select

from services.notifications.failures import deliver


def task(retries: int, task_id: str = "t-1") -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(id=task_id, retries=retries))


def answering(status: int):  # type: ignore[no-untyped-def]
    def send() -> int:
        request = httpx.Request("POST", "http://users.test/api/v1/rag/query-results")
        raise httpx.HTTPStatusError("refused", request=request, response=httpx.Response(status, text="bad field", request=request))

    return send


def recorded(sessions) -> list[FailedDelivery]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return list(session.scalars(select(FailedDelivery)))


def test_a_4xx_is_recorded_at_once_with_payload_error_and_attempts(sessions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(httpx.HTTPStatusError):
        deliver(task(0), SEND_QUERY_RESULT, {"message_id": "m"}, answering(400), sessions)
    [row] = recorded(sessions)
    assert (row.task_name, row.task_id, row.payload, row.attempts, row.status) == (
        "send_query_result_to_users", "t-1", {"message_id": "m"}, 1, "failed")
    assert "400" in row.error and "bad field" in row.error


def test_a_5xx_with_retries_left_is_not_recorded(sessions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(httpx.HTTPStatusError):
        deliver(task(2), SEND_QUERY_RESULT, {}, answering(503), sessions)
    assert recorded(sessions) == []


def test_a_5xx_that_exhausts_the_retries_is_recorded_once(sessions) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2):  # the same task id twice: a redelivered message
        with pytest.raises(httpx.HTTPStatusError):
            deliver(task(3), SEND_QUERY_RESULT, {}, answering(503), sessions)
    [row] = recorded(sessions)
    assert row.attempts == 4


def test_a_success_returns_the_senders_value(sessions) -> None:  # type: ignore[no-untyped-def]
    assert deliver(task(0), SEND_QUERY_RESULT, {}, lambda: 201, sessions) == 201
    assert recorded(sessions) == []
