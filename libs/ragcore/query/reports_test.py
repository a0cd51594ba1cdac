"""The report relay publishes each unreported message's reports once, records them first, and keeps
what the broker refused for the next round. (Integration: tests/integration/query_test.py.)"""

import ast
import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from sqlalchemy import select

from ragcore.db import Sessions, utcnow
from ragcore.db.models import Conversation, Message, TaskRecord
from ragcore.query import reports
from ragcore.tasks import contracts, ledger


class Broker:
    """Stands in for the Celery app's publish: records what was sent, refuses after `fail_after`."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail_after = fail_after

    @contextmanager
    def producer_or_acquire(self) -> Iterator[None]:
        yield None

    def send_task(
        self,
        name: str,
        kwargs: dict[str, Any],
        queue: str,
        task_id: str,
        headers: dict[str, Any],
        kwargsrepr: str,
        producer: None,
    ) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker down")
        self.sent.append(
            {
                "name": name,
                "kwargs": kwargs,
                "queue": queue,
                "task_id": task_id,
                "headers": headers,
                "kwargsrepr": kwargsrepr,
            }
        )


@pytest.fixture
def messages(sessions: Sessions) -> list[str]:
    """Three unreported messages (two users) and one reported long ago."""
    now = utcnow()
    with sessions() as session:
        session.add(Conversation(id="c", user_id="alice", created_at=now, updated_at=now))
        session.flush()
        for i, (user, reported) in enumerate(
            (("alice", None), ("bob", None), ("alice", None), ("alice", now))
        ):
            session.add(
                Message(
                    id=f"m{i}",
                    conversation_id="c",
                    user_id=user,
                    query=f"q{i}",
                    answer=f"a{i}",
                    sources=[
                        {
                            "document_id": "d",
                            "chunk_id": "d/0",
                            "score": 0.5,
                            "text": "t",
                            "metadata": {},
                        }
                    ],
                    tokens_used=i,
                    processing_time_ms=1.5,
                    created_at=now + timedelta(seconds=i),
                    reported_at=reported,
                )
            )
    return ["m0", "m1", "m2"]


def unreported(sessions: Sessions) -> list[str]:
    with sessions() as session:
        return list(
            session.scalars(
                select(Message.id).where(Message.reported_at.is_(None)).order_by(Message.id)
            )
        )


def test_each_message_gets_both_reports_recorded_in_the_ledger_before_they_are_published(
    sessions: Sessions, messages: list[str]
) -> None:
    broker = Broker()
    assert reports.publish_pending(broker, sessions=sessions) == 3
    results = [s for s in broker.sent if s["name"] == "send_query_result_to_users"]
    stats = [s for s in broker.sent if s["name"] == "update_user_statistics"]
    assert [r["kwargs"]["message_id"] for r in results] == messages
    assert set(results[0]["kwargs"]) == {
        "user_id",
        "conversation_id",
        "message_id",
        "query",
        "answer",
        "sources",
        "tokens_used",
        "processing_time_ms",
    }
    contracts.SEND_QUERY_RESULT.validate(results[1]["kwargs"])  # what the worker will accept
    assert [s["kwargs"]["user_id"] for s in stats] == ["alice", "bob", "alice"]
    assert {s["queue"] for s in results} == {"notifications"} and {s["queue"] for s in stats} == {
        "user"
    }
    assert unreported(sessions) == []
    with sessions() as session:
        assert reports.backlog(session) == (0, None)
    # recorded in the ledger (before publishing), so the publisher signal skips them
    with sessions() as session:
        recorded = {r.task_id: r.state for r in session.scalars(select(TaskRecord))}
    assert recorded == {s["task_id"]: "PENDING" for s in broker.sent}
    assert all(s["headers"] == {ledger.RECORDED_HEADER: True} for s in broker.sent)
    assert reports.publish_pending(broker, sessions=sessions) == 0 and len(broker.sent) == 6


def test_what_the_broker_refused_is_published_in_a_later_round_with_the_same_task_ids(
    sessions: Sessions, messages: list[str]
) -> None:
    down = Broker(fail_after=1)
    assert reports.publish_pending(down, sessions=sessions) == 0
    assert [s["kwargs"]["message_id"] for s in down.sent] == ["m0"]
    # m0's result went out but its statistics update did not: m0 stays unreported with the rest.
    assert unreported(sessions) == messages
    with sessions() as session:
        count, oldest = reports.backlog(session)
        assert count == 3 and oldest is not None and (utcnow() - oldest).total_seconds() < 60
    back = Broker()
    assert reports.publish_pending(back, sessions=sessions) == 3
    # the same task again: Users counts it once
    assert back.sent[0]["task_id"] == down.sent[0]["task_id"]
    assert unreported(sessions) == []
    with sessions() as session:
        # recorded once each, though sent in two rounds
        assert session.query(TaskRecord).count() == 6


def test_a_report_message_shows_the_ids_of_its_query_not_its_answer(
    sessions: Sessions, messages: list[str], celery_on_redis: tuple[Celery, redis.Redis]
) -> None:
    app, client = celery_on_redis
    assert reports.publish_pending(app, sessions=sessions) == 3
    sent = [orjson.loads(m) for m in client.lrange("notifications", 0, -1)]
    assert len(sent) == 3
    for message in sent:
        shown = ast.literal_eval(message["headers"]["kwargsrepr"])
        assert set(shown) == {"user_id", "conversation_id", "message_id"}
        assert shown["message_id"] in messages
        # the whole arguments are still the message's body
        _, kwargs, _ = orjson.loads(base64.b64decode(message["body"]))
        assert kwargs["message_id"] == shown["message_id"] and "answer" in kwargs
    shown_users = [orjson.loads(m)["headers"]["kwargsrepr"] for m in client.lrange("user", 0, -1)]
    assert sorted(shown_users) == sorted(repr({"user_id": u}) for u in ("alice", "bob", "alice"))
