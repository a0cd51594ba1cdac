"""PostgreSQL unreachable for 30 s under queries and deliveries → every report once, no unfinished
ledger row for a finished task, one log line as the outage begins and one as it ends.

Before: a delivery whose failure could not be recorded was acknowledged and lost, a ledger update
that failed was dropped (rows left STARTED or PENDING for good), and Beat logged a traceback every
0.5 s. The shared PostgreSQL server cannot be stopped, so the deployables reach this test's database
through a TCP proxy on 127.0.0.1 that the test cuts (every connection dropped, new ones closed at
once). Users refuses everything for the same 30 s, so the deliveries in flight exhaust their quick
retries and must record their failure while the database is down. Real processes: the API, Beat,
the sync and notifications workers, the Ingest/Users/Qdrant stand-ins.
"""

from __future__ import annotations

import tempfile
import time

import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url

from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore.tasks.states import UNFINISHED
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import postgres_database
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import start_users
from tests.support.stack import QUERY_KEY, Stack, running_stack
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

OUTAGE_SECONDS = 30


def _ask(stack: Stack, ingest: Running[IngestApp], n: int) -> str | None:
    """A query's message id, or None when the API answered 503 (the database is down)."""
    doc = ingest.app.corpus.documents()[f"doc-{n % 6:05d}"]
    with stack.api(QUERY_KEY) as api:
        try:
            response = api.post(
                "/api/v1/query/", json={"user_id": f"user-{n}", "query": doc.query(n % 3)}
            )
        except httpx.TimeoutException:
            return None
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    return str(response.json()["message_id"])


def test_a_30s_database_outage_loses_no_report_leaves_no_row_unfinished_and_floods_no_log() -> None:
    with postgres_database() as real_url:
        url = make_url(real_url)
        with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
            proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            )
            _outage(proxied, proxy)


def _outage(database_url: str, proxy: TcpProxy) -> None:
    with (
        start_ingest(documents=6, chunks=3) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        start_users() as users,
        running_stack(
            database_url=database_url,
            ingest_url=ingest.url,
            qdrant_url=qdrant.url,
            qdrant_collection="database_outage_test",
            users_url=users.url,
            http_timeout_seconds="3",
            reconcile_seconds="2",
            reconcile_grace_seconds="10",
        ) as stack,
    ):
        sync = stack.start_worker(Queue.SYNC)
        beat = stack.start("services.beat.main", beat_schedule="{}")
        stack.start_api()
        first = dispatch.send(stack.producer, contracts.SYNC_EMBEDDINGS)
        assert stack.producer.AsyncResult(first).get(timeout=60)["copied"] == 18
        sync.stop()
        worker = stack.start_worker(Queue.NOTIFICATIONS)

        answered = {_ask(stack, ingest, n) for n in range(5)} - {None}
        assert len(answered) == 5
        users.app.faults.outage(503)
        answered |= {_ask(stack, ingest, n) for n in range(5, 10)} - {None}
        assert len(answered) == 10
        time.sleep(2)  # their reports are published and in their quick retries
        beat_lines, worker_lines = len(beat.logs().splitlines()), len(worker.logs().splitlines())

        proxy.cut()
        cut_at = time.monotonic()
        refused = 0
        n = 10
        while time.monotonic() - cut_at < OUTAGE_SECONDS:
            message_id = _ask(stack, ingest, n)
            n += 1
            if message_id is None:
                refused += 1
            else:
                answered.add(message_id)
            time.sleep(1)
        proxy.restore()
        users.app.faults.clear()
        back = time.monotonic()
        assert refused > 0  # the API did lose its database
        for _ in range(5):
            message_id = _ask(stack, ingest, n)
            n += 1
            assert message_id is not None
            answered.add(message_id)

        def reported() -> set[str]:
            keys = {d["idempotency_key"] for d in users.app.deliveries("query-results")}
            return keys & answered

        wait_until(lambda: reported() == answered, 120, "every report at Users", interval=0.5)
        healed = time.monotonic() - back

        def unfinished() -> list[str]:
            with session_scope() as session:
                return list(
                    session.scalars(
                        select(TaskRecord.task_id).where(
                            TaskRecord.name == contracts.SEND_QUERY_RESULT.name,
                            TaskRecord.state.in_(sorted(UNFINISHED)),
                        )
                    )
                )

        wait_until(lambda: unfinished() == [], 60, "no report task left unfinished in the ledger")
        settled = time.monotonic() - back

        arrived = [
            d for d in users.app.deliveries("query-results") if d["idempotency_key"] in answered
        ]
        assert len({d["idempotency_key"] for d in arrived}) == len(answered)
        assert len(arrived) == len(answered), "a report reached Users twice"
        outage_beat = beat.logs().splitlines()[beat_lines:]
        outage_worker = worker.logs().splitlines()[worker_lines:]
        # A delivery deferred while Users is down ends with its traceback, as before: not counted.
        tracebacks = [
            line
            for line in outage_beat + outage_worker
            if "Traceback" in line and "OperationalError" in line
        ]
        assert len(tracebacks) <= 2, "\n".join(tracebacks[:5])
        relay = [line for line in outage_beat if "report-relay: the database" in line]
        assert len(relay) == 2, relay  # one as it went, one as it came back
        assert "unreachable" in relay[0] and "is back" in relay[1]
        print(
            f"database outage {OUTAGE_SECONDS}s: {len(answered)} queries answered, {refused} "
            f"refused (503); every report at Users {healed:.1f}s after the database returned, "
            f"no unfinished ledger row {settled:.1f}s after; Users duplicates: "
            f"{users.app.duplicates['query-results']}; log lines during it: beat "
            f"{len(outage_beat)}, worker {len(outage_worker)}, tracebacks {len(tracebacks)}"
        )
