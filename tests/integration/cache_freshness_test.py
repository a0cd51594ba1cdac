"""The query cache never serves an answer once a page that changed its sources was applied, even
while the full sync that brought the page still runs (the data version moves with the pages)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from ragcore.db import session_scope
from ragcore.db.models import FullSyncPage
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.ingest import BASE_TIME, IngestApp, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.server import Running
from tests.support.stack import QUERY_KEY, Stack, running_stack


@pytest.fixture
def deployed() -> Iterator[tuple[Stack, Running[IngestApp]]]:
    with (
        start_ingest(documents=40, chunks=4) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        running_stack(
            ingest_url=ingest.url, qdrant_url=qdrant.url, qdrant_collection="cache_freshness"
        ) as stack,
    ):
        stack.start_worker(Queue.SYNC, sync_batch_size="16")  # 10 pages
        stack.start_api()
        yield stack, ingest


def _ask(stack: Stack, query: str) -> dict[str, Any]:
    with stack.api(QUERY_KEY) as api:
        response = api.post("/api/v1/query/", json={"user_id": "u1", "query": query, "top_k": 1})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _pages_applied(task_id: str) -> int:
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).select_from(FullSyncPage).where(FullSyncPage.task_id == task_id)
        )
    return count or 0


def test_a_cached_answer_is_not_served_once_a_page_changing_its_sources_is_applied(
    deployed: tuple[Stack, Running[IngestApp]],
) -> None:
    stack, ingest = deployed
    first = dispatch.send(stack.producer, contracts.TRIGGER_FULL_SYNC)
    stack.producer.AsyncResult(first).get(timeout=120)
    doc = next(iter(ingest.app.corpus.documents().values()))
    new_text = "Harbor safety, revised: helmets and life vests on the quay from June."
    query = new_text  # cached now with another document's text: nothing says this yet
    assert _ask(stack, query)["cached"] is False
    before = _ask(stack, query)
    assert before["cached"] is True and before["sources"][0]["text"] != new_text

    # The document changes in Ingest, early in the feed (so in the sync's first page), and every
    # page of the next full sync takes a second to serve: the sync runs for ~10 s.
    ingest.app.corpus.put_document(doc.id, texts=[new_text] * doc.chunks, updated_at=BASE_TIME)
    ingest.app.faults.set_delay(1.0)
    try:
        sync = dispatch.send(stack.producer, contracts.TRIGGER_FULL_SYNC)
        wait_until(lambda: _pages_applied(sync) >= 1, 60, "the first page applied")
        during = _ask(stack, query)
        still_running = stack.producer.AsyncResult(sync).state not in ("SUCCESS", "FAILURE")
    finally:
        ingest.app.faults.clear()
    assert still_running, "the sync ended before the query: nothing was measured"
    # the page that changed the sources was applied: the old answer is not served
    assert during["cached"] is False
    assert during["sources"][0]["text"] == new_text
    stack.producer.AsyncResult(sync).get(timeout=120)
