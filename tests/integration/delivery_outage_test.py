"""Reports to Users survive a Users outage without an operator: after the quick retries they wait,
the circuit breaker holds them back while Users is down, and when a probe gets through they all go
out at once, each exactly once. Real processes: the API, Beat (relay and re-driver), the sync and
notifications workers, the Users/Ingest/Qdrant stand-ins on 127.0.0.1.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from ragcore.db import session_scope, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, wait_until
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from tests.support.stack import QUERY_KEY, Stack, running_stack

QUERIES = 20
QUERY_RESULTS = "/api/v1/rag/query-results"


@dataclass
class Rig:
    stack: Stack
    ingest: Running[IngestApp]
    users: Running[UsersApp]

    def ask(self, n: int) -> str:
        doc = self.ingest.app.corpus.documents()[f"doc-{n % 6:05d}"]
        with self.stack.api(QUERY_KEY) as api:
            response = api.post(
                "/api/v1/query/", json={"user_id": f"user-{n}", "query": doc.query(n % 3)}
            )
        assert response.status_code == 200, response.text
        return str(response.json()["message_id"])

    def reported(self, message_ids: set[str]) -> set[str]:
        return {
            d["idempotency_key"] for d in self.users.app.deliveries("query-results")
        } & message_ids

    def metric(self, name: str, **labels: str) -> float:
        with self.stack.api() as api:
            text = api.get("/metrics").text
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{name}\{{{re.escape(selector)}\}} (\S+)$", text, re.M)
        assert match, f"{name}{{{selector}}} missing from /metrics"
        return float(match.group(1))


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with (
        start_ingest(documents=6, chunks=3) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        start_users() as users,
        running_stack(
            ingest_url=ingest.url,
            qdrant_url=qdrant.url,
            qdrant_collection="outage_test",
            users_url=users.url,
            http_timeout_seconds="3",
        ) as stack,
    ):
        sync = stack.start_worker(Queue.SYNC)
        stack.start("services.beat.main", beat_schedule="{}")
        stack.start_api()
        task_id = dispatch.send(stack.producer, contracts.SYNC_EMBEDDINGS)
        assert stack.producer.AsyncResult(task_id).get(timeout=60)["copied"] == 18
        # The rest of the test needs only the notifications worker: fewer processes on the CPUs.
        sync.stop()
        yield Rig(stack, ingest, users)


@contextmanager
def notifications_worker(rig: Rig, **settings: str) -> Iterator[Deployable]:
    """A notifications worker with `settings` for one test; Users forgets that test's deliveries
    after."""
    worker = rig.stack.start_worker(
        Queue.NOTIFICATIONS, name=f"notifications-{uuid.uuid4().hex[:6]}", **settings
    )
    try:
        yield worker
    finally:
        worker.stop()
        rig.users.app.reset()
        with session_scope() as session:
            session.execute(delete(FailedDelivery))


def _outage_then_return(
    rig: Rig, outage_seconds: float, backoff_left: timedelta = timedelta(0)
) -> float:
    """20 queries while Users refuses everything for `outage_seconds`; returns how long after Users
    returned every report had arrived. Asserts each arrived once and nobody called the API for it,
    and that when Users returned each waiting report's own next attempt was `backoff_left` away or
    more."""
    rig.users.app.faults.outage(503)
    down_at = time.monotonic()
    message_ids = {rig.ask(n) for n in range(QUERIES)}

    def all_waiting() -> bool:
        with session_scope() as session:
            waiting = session.scalars(
                select(FailedDelivery.status).where(
                    FailedDelivery.task_name == contracts.SEND_QUERY_RESULT.name
                )
            ).all()
        return len(waiting) == QUERIES and set(waiting) <= {"waiting", "redriven"}

    wait_until(all_waiting, outage_seconds, "every report waiting for a re-drive", interval=0.5)
    assert rig.reported(message_ids) == set()
    assert rig.metric("ragcore_circuit_breaker_state", neighbour="users", state="open") == 1
    # one may be a probe in flight
    assert rig.metric("ragcore_deliveries_waiting", neighbour="users") >= QUERIES - 1
    assert rig.metric("ragcore_deliveries_oldest_waiting_age_seconds", neighbour="users") > 0
    time.sleep(max(0.0, outage_seconds - (time.monotonic() - down_at)))
    refused = len(rig.users.app.log.entries(QUERY_RESULTS))
    with session_scope() as session:
        next_attempts = session.scalars(
            select(FailedDelivery.next_attempt_at).where(FailedDelivery.status == "waiting")
        ).all()
    assert len(next_attempts) >= QUERIES - 1
    if backoff_left:
        assert min(next_attempts) - utcnow() >= backoff_left  # type: ignore[type-var,operator]

    rig.users.app.faults.clear()
    returned_at = time.monotonic()
    wait_until(
        lambda: rig.reported(message_ids) == message_ids, 90, "every report at Users", interval=0.2
    )
    healed = time.monotonic() - returned_at

    arrived = [
        d for d in rig.users.app.deliveries("query-results") if d["idempotency_key"] in message_ids
    ]
    assert len(arrived) == QUERIES  # each exactly once
    assert rig.users.app.duplicates["query-results"] == 0
    assert healed <= 60, f"the reports took {healed:.1f}s after Users returned"
    # The breaker stopped the flood: no more than the requests that opened it, plus one probe per
    # interval. breaker_fail_max, and the requests of the worker's 4 processes in flight
    breaker_opened_by = 5 + 4
    assert (
        refused <= breaker_opened_by + outage_seconds / 15 + 2
    ), f"{refused} requests reached Users while it was down"
    with session_scope() as session:
        statuses = session.scalars(select(FailedDelivery.status)).all()
    assert statuses and set(statuses) == {"redriven"}  # none left for an operator
    assert rig.metric("ragcore_circuit_breaker_state", neighbour="users", state="closed") == 1
    print(
        f"outage {outage_seconds:.0f}s: {refused} requests refused, "
        f"all {QUERIES} reports at Users {healed:.1f}s after it returned"
    )
    return healed


def test_twenty_reports_made_during_a_60s_users_outage_reach_users_once_within_60s_of_its_return(
    rig: Rig,
) -> None:
    with notifications_worker(rig):
        _outage_then_return(rig, 60)


# A genuine 10-minute outage is too slow for CI. What it changes is where the deliveries stand when
# Users returns: deep in their backoff, their next own attempt many minutes away. These settings put
# them there from their first failure (first re-drive after 10 minutes, cap 30 minutes), so only the
# breaker's probe can bring them out within 60 s. (A genuine 10-minute outage with the default
# settings, run once by hand with this module's helpers: 44 requests reached Users while it was
# down, and all 20 reports were there 2.8 s after it returned.)
def test_reports_deep_in_backoff_after_a_long_outage_reach_users_once_within_60s_of_its_return(
    rig: Rig,
) -> None:
    with notifications_worker(
        rig, delivery_redrive_base_seconds="600", delivery_redrive_max_backoff_seconds="1800"
    ):
        _outage_then_return(rig, 30, backoff_left=timedelta(minutes=9))


def test_a_4xx_from_users_stays_failed_for_an_operator_who_redrives_or_discards_by_filter(
    rig: Rig,
) -> None:
    with notifications_worker(rig):
        _refused_then_operator(rig)


def _refused_then_operator(rig: Rig) -> None:
    rig.users.app.faults.fail(422, times=2, path=QUERY_RESULTS)
    message_ids = [rig.ask(100), rig.ask(101)]

    def failed() -> list[FailedDelivery]:
        with session_scope() as session:
            return list(
                session.scalars(select(FailedDelivery).where(FailedDelivery.status == "failed"))
            )

    rows = wait_until(lambda: len(failed()) == 2 and failed(), 30, "two failed deliveries")
    assert all(r.next_attempt_at is None and "HTTP 422" in r.error for r in rows)
    time.sleep(3)
    assert rig.reported(set(message_ids)) == set()  # nobody re-drives a refusal by itself

    with rig.stack.api() as api:
        # no filter: refused
        assert api.post("/api/v1/deliveries/redrive", json={}).status_code == 422
        assert api.post("/api/v1/deliveries/redrive", json={"task_name": "nope"}).status_code == 422
        nothing = api.post(
            "/api/v1/deliveries/discard", json={"error_contains": "no such error text"}
        )
        assert nothing.json() == {"matched": 0}
        redriven = api.post(
            "/api/v1/deliveries/redrive",
            json={"task_name": contracts.SEND_QUERY_RESULT.name, "error_contains": "http 422"},
        )
        assert redriven.status_code == 200 and redriven.json() == {"matched": 2}
    wait_until(
        lambda: rig.reported(set(message_ids)) == set(message_ids), 30, "the re-driven reports"
    )
    assert rig.users.app.duplicates["query-results"] == 0

    rig.users.app.faults.fail(400, times=1, path=QUERY_RESULTS)
    rig.ask(102)
    wait_until(lambda: failed(), 30, "a failed delivery")
    with rig.stack.api() as api:
        discarded = api.post(
            "/api/v1/deliveries/discard", json={"status": "failed", "error_contains": "HTTP 400"}
        )
        assert discarded.json() == {"matched": 1}
        listed = api.get("/api/v1/deliveries/failed", params={"status": "discarded"}).json()
    assert listed["total"] == 1
    assert failed() == []
