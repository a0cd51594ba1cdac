"""The console's ledger reads that must not walk the whole ledger are served by an index on
PostgreSQL (migration 0013; their timings at 1M rows are in docs/benchmarks.md): history filtered by
queue or by worker, and the queues picture, which reads no row of the table."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

from ragcore.db import migrate, utcnow
from ragcore.tasks import ledger
from ragcore.tasks.activity import queue_activity
from ragcore.tasks.contracts import Queue
from ragcore_dev.servers import postgres_database

ROWS = """
INSERT INTO task_ledger (task_id, name, queue, state, kwargs, sent_at, started_at, finished_at,
                         worker, retries, revoked)
SELECT 't-' || i, 'update_user_statistics', 'user', 'SUCCESS', '{}'::json,
       now() - i * interval '1 second', now() - i * interval '1 second',
       now() - i * interval '1 second', 'user@a', 0, false
FROM generate_series(1, 5000) AS i
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with postgres_database() as url:
        migrate.upgrade(url)
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text(ROWS))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE task_ledger"))  # index-only scans need it
        yield engine
        engine.dispose()


def _plan(engine: Engine, read: Any) -> str:
    """PostgreSQL's plan of the one statement `read(session)` sends."""
    sent: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        with Session(engine) as session:
            read(session)
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    assert len(sent) == 1, sent
    statement, parameters = sent[0]
    with engine.connect() as conn:
        # A small table: make a sequential scan the last resort, so the plan shows whether an
        # index can serve the statement at all (on a large ledger the planner picks it itself).
        conn.execute(text("SET enable_seqscan = off"))
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize(
    ("queue", "worker", "index"),
    [
        ("cleanup", None, "ix_task_ledger_queue_sent_at"),
        (None, "nobody@nowhere", "ix_task_ledger_worker_sent_at"),
    ],
)
def test_history_by_queue_or_worker_reads_its_index_in_page_order(
    engine: Engine, queue: str | None, worker: str | None, index: str
) -> None:
    plan = _plan(engine, lambda session: ledger.history(session, queue=queue, worker=worker))
    assert f"Index Scan Backward using {index}" in plan, plan
    assert "Sort" not in plan, plan


def test_the_queues_picture_reads_only_the_queue_index(engine: Engine) -> None:
    queues = [q.value for q in Queue]
    plan = _plan(
        engine, lambda session: queue_activity(session, queues, utcnow(), timedelta(hours=1), 12)
    )
    assert "Index Only Scan using ix_task_ledger_queue_sent_at" in plan, plan
