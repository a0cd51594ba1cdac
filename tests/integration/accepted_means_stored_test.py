"""A 202 means committed: the API's database connection dies mid-COMMIT → 503 and nothing stored,
never 202."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import Connection, create_engine, func, select, text

from ragcore.db import session_scope
from ragcore.db.models import FailedDelivery, SyncEvent
from ragcore.deliveries import DeliveryStatus
from ragcore_dev.processes import wait_until
from tests.support.stack import ADMIN_KEY, SYNC_KEY, Stack, running_stack

#: The advisory lock the test holds while the API's COMMIT waits for it.
HOLD = 91713


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as stack:
        stack.start_api()
        yield stack


@pytest.fixture
def holder(stack: Stack) -> Iterator[Connection]:
    engine = create_engine(stack.database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def _commit_waits_on_hold(conn: Connection, table: str, event: str) -> None:
    """A deferred constraint trigger runs inside COMMIT: it waits there while the test holds
    HOLD."""
    conn.execute(
        text(f"""
        CREATE OR REPLACE FUNCTION wait_for_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_advisory_xact_lock({HOLD}); RETURN NULL; END $$;
        DROP TRIGGER IF EXISTS hold_commit ON {table};
        CREATE CONSTRAINT TRIGGER hold_commit AFTER {event} ON {table} DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION wait_for_test_hold();
    """)
    )


def _cut_connection_mid_commit(
    conn: Connection, request: Callable[[], httpx.Response]
) -> httpx.Response:
    """Send `request` while the test holds HOLD; kill the API's backend once its COMMIT waits for
    it."""
    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": HOLD})
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(request()))
    sender.start()
    try:
        waiting = (
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND NOT granted"
        )
        pid: int = wait_until(
            lambda: conn.execute(text(waiting), {"k": HOLD}).scalar(),
            30,
            "the API's COMMIT to wait",
        )
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": HOLD})
        sender.join(30)
    [answer] = answers
    return answer


def test_events_whose_commit_fails_are_a_503_and_not_stored(
    stack: Stack, holder: Connection
) -> None:
    _commit_waits_on_hold(holder, "sync_events", "INSERT")
    body = {
        "events": [
            {
                "document_id": "cut-doc",
                "action": "upsert",
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        ]
    }
    with stack.api(SYNC_KEY) as api:
        answer = _cut_connection_mid_commit(
            holder, lambda: api.post("/api/v1/sync/events", json=body)
        )
        assert answer.status_code == 503, answer.text
        assert "nothing was stored" in answer.json()["detail"]
        with session_scope() as session:
            assert (
                session.scalar(
                    select(func.count())
                    .select_from(SyncEvent)
                    .where(SyncEvent.document_id == "cut-doc")
                )
                == 0
            )

        # the database is back: Ingest's re-send is stored
        again = api.post("/api/v1/sync/events", json=body)
    assert again.status_code == 202 and again.json() == {"stored": 1}
    with session_scope() as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(SyncEvent)
                .where(SyncEvent.document_id == "cut-doc")
            )
            == 1
        )


def test_a_redrive_whose_commit_fails_is_a_503_and_stays_failed(
    stack: Stack, holder: Connection
) -> None:
    payload = {
        "notification_type": "maintenance",
        "title": "t",
        "message": "m",
        "user_ids": ["u"],
        "metadata": {},
        "idempotency_key": "cut-redrive",
    }
    with session_scope() as session:
        row = FailedDelivery(
            task_name="send_system_notification",
            task_id="cut-task",
            payload=payload,
            error="HTTP 500",
            attempts=4,
            status=DeliveryStatus.FAILED,
        )
        session.add(row)
    _commit_waits_on_hold(holder, "failed_deliveries", "UPDATE")
    with stack.api(ADMIN_KEY) as api:
        answer = _cut_connection_mid_commit(
            holder, lambda: api.post(f"/api/v1/deliveries/{row.id}/retry")
        )
        assert answer.status_code == 503, answer.text
        assert "nothing was stored" in answer.json()["detail"]
        with session_scope() as session:
            kept = session.get(FailedDelivery, row.id)
            assert kept is not None and kept.status == "failed"

        assert api.post(f"/api/v1/deliveries/{row.id}/retry").status_code == 202


@pytest.mark.parametrize("action", ["redrive", "discard"])
def test_a_bulk_action_whose_commit_fails_is_a_503_and_changes_nothing(
    stack: Stack, holder: Connection, action: str
) -> None:
    with session_scope() as session:
        row = FailedDelivery(
            task_name="send_system_notification",
            task_id=f"cut-bulk-{action}",
            payload={"idempotency_key": f"cut-bulk-{action}"},
            error=f"HTTP 500 cut-bulk-{action}",
            attempts=4,
            status=DeliveryStatus.FAILED,
        )
        session.add(row)
    _commit_waits_on_hold(holder, "failed_deliveries", "UPDATE")
    only_this = {"error_contains": f"cut-bulk-{action}"}
    with stack.api(ADMIN_KEY) as api:
        answer = _cut_connection_mid_commit(
            holder, lambda: api.post(f"/api/v1/deliveries/{action}", json=only_this)
        )
        assert answer.status_code == 503, answer.text
        assert "nothing was stored" in answer.json()["detail"]
        with session_scope() as session:
            kept = session.get(FailedDelivery, row.id)
            assert kept is not None and kept.status == "failed"

        again = api.post(f"/api/v1/deliveries/{action}", json=only_this)
    assert again.status_code == 200 and again.json() == {"matched": 1}
