"""/metrics and /queues from the broker and the ledger: what an autoscaler and an alert read."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ragcore.tasks import dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore_dev.processes import wait_until
from tests.support.stack import ADMIN_KEY, QUERY_KEY, Stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    stack.start_api()
    with stack.api(ADMIN_KEY) as client:
        yield client


def _samples(api: httpx.Client) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_show_the_depth_of_a_queue_whose_worker_is_stopped(
    stack: Stack, api: httpx.Client
) -> None:
    worker = stack.start_worker(Queue.USER, name="user-metrics")
    consumed = _samples(api)
    assert consumed[("ragcore_queue_consumers", (("queue", "user"),))] == 1
    worker.stop()

    for n in range(3):
        dispatch.send(stack.producer, CANARIES[Queue.USER], {"echo": str(n)})
    samples = _samples(api)
    assert samples[("ragcore_queue_depth", (("queue", "user"),))] == 3
    assert samples[("ragcore_queue_consumers", (("queue", "user"),))] == 0
    assert samples[("ragcore_queue_oldest_task_age_seconds", (("queue", "user"),))] >= 0
    assert samples[("ragcore_queue_depth", (("queue", "sync"),))] == 0
    assert (
        samples[("ragcore_tasks", (("name", CANARIES[Queue.USER].name), ("state", "PENDING")))] == 3
    )

    user = next(q for q in api.get("/api/v1/tasks/queues").json()["queues"] if q["name"] == "user")
    assert (user["depth"], user["consumers"], user["flagged"]) == (3, 0, True)
    assert (
        user["warning"] == "no worker consumes this queue" and user["oldest_task_age_seconds"] >= 0
    )


def test_metrics_count_finished_tasks_by_state_and_bucket_their_durations(
    stack: Stack, api: httpx.Client
) -> None:
    worker = stack.start_worker(Queue.CLEANUP, name="cleanup-metrics")
    name = CANARIES[Queue.CLEANUP].name
    slow = dispatch.send(stack.producer, CANARIES[Queue.CLEANUP], {"sleep_seconds": 0.6})
    failed = dispatch.send(stack.producer, CANARIES[Queue.CLEANUP], {"fail": True})
    for task_id in (slow, failed):
        stack.producer.AsyncResult(task_id).get(timeout=30, propagate=False)

    def both_in_the_ledger() -> Samples | None:
        samples = _samples(api)
        finished = samples.get(("ragcore_task_duration_seconds_gcount", (("name", name),)), 0)
        return samples if finished == 2 else None

    samples = wait_until(both_in_the_ledger, 10, "both canaries in the ledger")
    assert samples[("ragcore_tasks", (("name", name), ("state", "SUCCESS")))] == 1
    assert samples[("ragcore_tasks", (("name", name), ("state", "FAILURE")))] == 1
    bucket = "ragcore_task_duration_seconds_bucket"
    # the failure, at once; not the 0.6 s sleeper
    assert samples[(bucket, (("le", "0.5"), ("name", name)))] == 1
    assert samples[(bucket, (("le", "+Inf"), ("name", name)))] == 2
    assert samples[("ragcore_task_duration_seconds_gsum", (("name", name),))] >= 0.6
    worker.stop()


def test_metrics_need_an_admin_key_unless_made_public(stack: Stack) -> None:
    with stack.api(key=None) as anonymous, stack.api(QUERY_KEY) as query:
        assert anonymous.get("/metrics").status_code == 401
        assert query.get("/metrics").status_code == 403
    stack.start_api(metrics_public="true")
    with stack.api(key=None) as anonymous:
        response = anonymous.get("/metrics")
    assert response.status_code == 200 and "ragcore_queue_depth" in response.text


def test_metrics_show_answered_queries_whose_reports_wait_for_the_relay(
    stack: Stack, api: httpx.Client
) -> None:
    # No Beat runs here, so nothing publishes the reports: they wait, counted, with their age.
    before = _samples(api)[("ragcore_reports_unreported", ())]
    with stack.api(QUERY_KEY) as client:
        for n in range(2):
            assert (
                client.post(
                    "/api/v1/query/", json={"user_id": "metrics-user", "query": f"anything {n}"}
                ).status_code
                == 200
            )
    samples = _samples(api)
    assert samples[("ragcore_reports_unreported", ())] == before + 2
    assert samples[("ragcore_reports_oldest_unreported_age_seconds", ())] > 0
