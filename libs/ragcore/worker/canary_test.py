"""Each queue's canary, run by an in-process worker (the classic `celery_app`/`celery_worker`
fixtures that pytest-celery carries, on a real Redis): it answers with its queue and who ran it,
reports progress while it sleeps, and fails at once, never retried, when asked to or when its
arguments break its contract. A thread, not a process: the image tests (tests/images) and the
integration tests run the worker as shipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, Task
from celery.result import AsyncResult
from celery.worker import WorkController

from ragcore.db import create_schema
from ragcore.settings import get_settings
from ragcore.tasks.app import PermanentTaskError
from ragcore.tasks.contracts import Queue
from ragcore.worker.runtime import define_canary
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import redis_server


@pytest.fixture
def celery_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with redis_server() as server:
        # The canary's progress goes to the ledger too: a database of its own.
        database = f"sqlite:///{tmp_path}/ledger.db"
        create_schema(database)
        monkeypatch.setenv("RAGCORE_DATABASE_URL", database)
        get_settings.cache_clear()
        yield {"broker_url": server.url, "result_backend": server.url, "result_extended": True}
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # Our queues only; the start-up ping goes to Celery's default queue, which no worker here reads.
    return {"queues": [q.value for q in Queue], "perform_ping_check": False}


@pytest.fixture
def canaries(celery_app: Celery) -> dict[Queue, Task]:
    """Defined before the worker starts: each test names `canaries` before `celery_worker`."""
    return {q: define_canary(celery_app, q) for q in Queue}


@pytest.mark.parametrize("queue", list(Queue), ids=lambda q: q.value)
def test_the_canary_answers_on_its_own_queue(
    canaries: dict[Queue, Task], celery_worker: WorkController, queue: Queue
) -> None:
    result = canaries[queue].delay(echo=f"hello {queue.value}")
    answer = result.get(timeout=10)
    assert answer["echo"] == f"hello {queue.value}" and answer["queue"] == queue.value
    assert result.queue == queue.value  # its contract routed it there


def test_the_canary_reports_progress_while_it_sleeps(
    canaries: dict[Queue, Task], celery_worker: WorkController
) -> None:
    result: AsyncResult = canaries[Queue.CLEANUP].delay(sleep_seconds=1)
    progress = wait_until(lambda: result.state == "PROGRESS" and result.info, 10, "progress")
    assert progress["total"] == 4 and 0 <= progress["done"] <= 4  # a step per quarter second
    assert result.get(timeout=10)["echo"] == "ok"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fail": True}, "the canary was asked to fail"),
        ({"sleep_seconds": 60}, "invalid arguments for ragcore.canary.user"),
        ({"unknown": 1}, "invalid arguments for ragcore.canary.user"),
    ],
    ids=["asked-to-fail", "beyond-its-limit", "unknown-argument"],
)
def test_the_canary_fails_at_once_and_is_never_retried(
    canaries: dict[Queue, Task], celery_worker: WorkController, kwargs: dict[str, Any], error: str
) -> None:
    result = canaries[Queue.USER].delay(**kwargs)
    with pytest.raises(PermanentTaskError, match=error):
        result.get(timeout=10)
    assert result.state == "FAILURE" and result.retries == 0
