"""Redis restarted empty → what the ledger held as waiting is published again and finishes once.

Before the reconciler, 10 reports waiting in the `notifications` list (its worker stopped), a full
sync waiting in `sync` and a countdown retry were gone with Redis' data: the ledger showed them
PENDING for ever and none reached Users. Real processes: the API, Beat (relay and reconciler), the
sync and notifications workers, the Ingest/Users/Qdrant stand-ins, a private redis-server that the
test stops and starts again without its data.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import redis
from celery import Celery

from ragcore.broker import depths
from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.app import create_app
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.ingest import start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.users import start_users
from tests.support.stack import QUERY_KEY, ledger_record, running_stack

REPORTS = 10
GRACE = 3


def _depth(client: redis.Redis, queue: Queue) -> int:
    return sum(int(client.llen(name)) for name in depths.list_names(queue.value))


def _broadcast_works(app: Celery) -> bool:
    try:
        app.control.ping(timeout=0.2)
    except redis.ConnectionError:
        return False  # a pooled connection of before the restart: the next try opens a new one
    return True


def test_tasks_waiting_when_redis_restarts_empty_are_published_again_and_finish_once() -> None:
    with (
        start_ingest(documents=6, chunks=3) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        start_users() as users,
        running_stack(
            ingest_url=ingest.url,
            qdrant_url=qdrant.url,
            qdrant_collection="redis_empty_test",
            users_url=users.url,
            http_timeout_seconds="3",
            reconcile_seconds="1",
            reconcile_grace_seconds=str(GRACE),
        ) as stack,
    ):
        sync = stack.start_worker(Queue.SYNC)
        stack.start("services.beat.main", beat_schedule="{}")
        stack.start_api()
        first = dispatch.send(stack.producer, contracts.SYNC_EMBEDDINGS)
        assert stack.producer.AsyncResult(first).get(timeout=60)["copied"] == 18
        sync.stop()  # nothing consumes `sync` or `notifications` now

        client = stack.redis_client()
        message_ids = set()
        for n in range(REPORTS):
            doc = ingest.app.corpus.documents()[f"doc-{n % 6:05d}"]
            with stack.api(QUERY_KEY) as api:
                response = api.post(
                    "/api/v1/query/", json={"user_id": f"user-{n}", "query": doc.query(n % 3)}
                )
            assert response.status_code == 200, response.text
            message_ids.add(response.json()["message_id"])
        full_sync = dispatch.send(stack.producer, contracts.TRIGGER_FULL_SYNC)
        # A retry waiting on its countdown, as a worker leaves it: RETRY in the ledger, the message
        # with its ETA back in the queue (its worker stopped before the ETA came).
        retry = dispatch.send(
            stack.producer,
            contracts.SEND_SYSTEM_NOTIFICATION,
            {"notification_type": "maintenance", "title": "t", "message": "m", "user_ids": ["u"]},
            countdown=600,
        )
        with session_scope() as session:
            row = session.get(TaskRecord, retry)
            assert row is not None
            row.state, row.retries = "RETRY", 1
        wait_until(
            lambda: _depth(client, Queue.NOTIFICATIONS) == REPORTS + 1,
            30,
            "the reports and the retry waiting in notifications",
        )
        assert _depth(client, Queue.SYNC) == 1

        stack.redis.stop()
        stack.redis.start()  # --save "" and no AOF: it comes back empty
        back = time.monotonic()
        # The test's own connections died with the server.
        client = stack.redis_client()
        stack.producer.close()
        stack.producer = create_app("tests", get_settings())
        wait_until(lambda: _broadcast_works(stack.producer), 30, "the test's broadcasts")
        assert _depth(client, Queue.NOTIFICATIONS) == 0 and _depth(client, Queue.SYNC) == 0

        # The reconciler publishes them again (after Redis' settling time and the grace period).
        wait_until(
            lambda: _depth(client, Queue.NOTIFICATIONS) >= REPORTS + 1
            and _depth(client, Queue.SYNC) == 1,
            90,
            "the lost tasks published again",
            interval=0.5,
        )
        republished = time.monotonic() - back
        stack.start_worker(Queue.NOTIFICATIONS)
        stack.start_worker(Queue.SYNC)

        def reported() -> set[str]:
            keys = {d["idempotency_key"] for d in users.app.deliveries("query-results")}
            return keys & message_ids

        wait_until(lambda: reported() == message_ids, 90, "every report at Users", interval=0.5)
        done = ledger_record(full_sync, "SUCCESS", "FAILURE", timeout=120)
        assert done.state == "SUCCESS", done.error
        ledger_record(retry, "SUCCESS", timeout=60)
        healed = time.monotonic() - back

        arrived = [
            d for d in users.app.deliveries("query-results") if d["idempotency_key"] in message_ids
        ]
        assert len(arrived) == REPORTS  # each exactly once
        assert users.app.duplicates["query-results"] == 0
        assert len(users.app.deliveries("notifications")) == 1
        with stack.api() as api:
            status: dict[str, Any] = api.get(f"/api/v1/tasks/status/{full_sync}").json()
            metrics = api.get("/metrics").text
        assert status["status"] == "SUCCESS"
        assert status["reconciled"] is True and status["reconcile_reason"] == "lost"
        assert status["reconciled_at"] is not None
        with session_scope() as session:
            reasons = {
                r.task_id: r.reconcile_reason
                for r in session.query(TaskRecord).filter(TaskRecord.reconciled_at.is_not(None))
            }
        assert reasons[retry] == "lost"
        assert sum(1 for reason in reasons.values() if reason == "lost") >= REPORTS + 2
        assert first not in reasons  # finished before: never touched
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('ragcore_reconciled_total{queue="notifications",reason="lost"}')
        ]
        assert counted and counted[0] >= REPORTS + 1
        print(
            f"Redis restarted empty: lost tasks published again {republished:.1f}s after it "
            f"returned; all finished (workers started then) {healed:.1f}s after"
        )
