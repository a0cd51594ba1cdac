"""GET /metrics in process, with no worker running: who may read it, and the queue, ledger and
delivery families read from a private Redis and a SQLite database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.conftest import ADMIN, QUERY, as_key
from api.main import create_app
from ragcore.db import session_scope, utcnow
from ragcore.db.models import FailedDelivery
from ragcore.deliveries import DeliveryStatus
from ragcore.settings import get_settings
from ragcore.tasks import contracts


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=as_key(ADMIN))
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_need_the_admin_key(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=as_key(QUERY)).status_code == 403


def test_public_metrics_need_no_key(app_settings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGCORE_METRICS_PUBLIC", "true")
    get_settings.cache_clear()
    app = create_app()
    with TestClient(app) as public:
        assert public.get("/metrics").status_code == 200
    app.state.celery.close()


def test_a_sent_task_counts_in_its_queue_and_in_the_ledger_window(client: TestClient) -> None:
    sent = client.post("/api/v1/tasks/trigger/cleanup-cache", headers=as_key(ADMIN))
    assert sent.status_code == 202
    samples = _samples(client)
    assert samples[("ragcore_queue_depth", (("queue", "cleanup"),))] == 1
    assert samples[("ragcore_queue_consumers", (("queue", "cleanup"),))] == 0
    name = contracts.CLEANUP_OLD_CACHE.name
    assert samples[("ragcore_tasks", (("name", name), ("state", "PENDING")))] == 1
    # no Beat here: the window aggregated for this scrape, so current
    assert samples[("ragcore_ledger_window_age_seconds", ())] == 0


def test_a_waiting_delivery_counts_with_its_age_per_neighbour(client: TestClient) -> None:
    with session_scope() as session:
        session.add(
            FailedDelivery(
                task_name=contracts.SEND_QUERY_RESULT.name,
                task_id="t-waits",
                payload={},
                error="HTTP 503",
                attempts=4,
                status=DeliveryStatus.WAITING,
                waiting_since=utcnow() - timedelta(minutes=5),
                next_attempt_at=utcnow(),
            )
        )
    samples = _samples(client)
    users = (("neighbour", contracts.USERS),)
    assert samples[("ragcore_deliveries_waiting", users)] == 1
    assert samples[("ragcore_deliveries_oldest_waiting_age_seconds", users)] >= 300
    closed = (("neighbour", contracts.USERS), ("state", "closed"))
    assert samples[("ragcore_circuit_breaker_state", closed)] == 1
