"""Benchmark: the task API on a ledger of 1M or 10M rows, old indexes vs new, same run, same data.

    PYTHONPATH=libs:. python -m tests.benchmarks.task_api_scale [--rows 1000000] [--samples 300]

A fresh PostgreSQL database is migrated to head and filled by a loader (`generate_series` in the
server: no row crosses the wire). The API app answers in this process through Starlette's
TestClient (routing, auth, the Redis lookup of the live state, the ledger, serialisation). Phases,
same data:

- floor:    TestClient against a bare FastAPI app with one sync route: what any request costs here;
- baseline: the ledger's indexes before migration 0007 (name, state, sent_at alone);
- head:     the indexes of migration 0007;
- hot:      head, after every row of /metrics' window was updated again (as workers do): PostgreSQL
            must read the heap too until autovacuum marks the pages all-visible;
- snapshot: hot, with Beat's snapshot of the window fresh (`ragcore.tasks.ledger.snapshot`, one
            round just run): /metrics reads it instead of aggregating the window; Beat's round
            (which aggregates it, as every request did until here) is timed too.

Printed: p50 (and p99) per request and phase, the ratio head / baseline, head against the
targets (status ≤ 3 ms, a filtered history page ≤ 10 ms, /metrics ≤ 50 ms), and /metrics from the
snapshot against head and hot; then EXPLAIN (ANALYZE, BUFFERS) of the statements behind history and
/metrics in the head phase.

The rows model the issue's load: a million answered queries a day, two ledger rows each (the report
delivery and the statistics update), so 2M rows a day and ~83k rows in /metrics' one-hour window,
whatever the total; 2 % other tasks; ~0.1 % failures.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from api.main import create_app
from ragcore.db import get_engine, migrate, reset_engines, session_scope, utcnow
from ragcore.settings import get_settings
from ragcore.tasks.ledger import snapshot
from ragcore_dev.servers import postgres_database, redis_server
from tests.benchmarks.common import percentile

#: The ledger's indexes before migration 0007, and the ones it makes (see the migration).
OLD_INDEXES = (
    "CREATE INDEX ix_task_ledger_name ON task_ledger (name)",
    "CREATE INDEX ix_task_ledger_state ON task_ledger (state)",
    "CREATE INDEX ix_task_ledger_sent_at ON task_ledger (sent_at)",
)
NEW_INDEXES = (
    "CREATE INDEX ix_task_ledger_name_sent_at ON task_ledger (name, sent_at, task_id)",
    "CREATE INDEX ix_task_ledger_state_sent_at ON task_ledger (state, sent_at, task_id)",
    "CREATE INDEX ix_task_ledger_sent_at_task_id ON task_ledger (sent_at, task_id)"
    " INCLUDE (name, state, run_seconds)",
)
TARGETS_MS = {"status": 3.0, "history": 10.0, "metrics": 50.0}
#: The phases that measure /metrics alone.
LATE = ("hot", "snapshot")
ADMIN_KEY = "bench-admin-key"
#: The rare names (2 % of rows, in turn); the two per-query tasks make up the rest.
RARE = (
    "calculate_user_tier",
    "sync_embeddings_task",
    "process_sync_queue",
    "trigger_full_sync_task",
    "delete_document_embeddings_task",
    "send_usage_statistics",
    "send_system_notification",
    "cleanup_old_cache",
    "cleanup_query_cache",
    "cleanup_old_conversations",
    "cleanup_failed_tasks",
    "reset_user_daily_limit",
    "reset_all_daily_limits",
)

# Row i (1-based) was sent (rows - i) * gap seconds ago: the newest is now. The id is derived from
# i, so the benchmark can ask for any row without reading ids back.
LOAD = """
INSERT INTO task_ledger (task_id, name, queue, state, kwargs, sent_at, started_at, finished_at,
                         run_seconds, worker, retries, result, error, revoked)
SELECT md5(i::text)::uuid::text,
       CASE WHEN i % 100 < 49 THEN 'send_query_result_to_users'
            WHEN i % 100 < 98 THEN 'update_user_statistics'
            ELSE (CAST(:rare AS text[]))[1 + (i / 100) % :rare_count] END,
       CASE WHEN i % 100 < 49 THEN 'notifications' ELSE 'user' END,
       CASE WHEN i > :rows - 200 THEN (ARRAY['PENDING', 'STARTED'])[1 + i % 2]
            WHEN i % 997 = 0 THEN 'FAILURE' WHEN i % 5003 = 0 THEN 'REVOKED' ELSE 'SUCCESS' END,
       json_build_object('user_id', 'user-' || (i % 5000), 'message_id', md5((-i)::text),
                         'conversation_id', md5((i / 3)::text)),
       ts, ts + interval '5 milliseconds',
       CASE WHEN i > :rows - 200 THEN NULL
            ELSE ts + (20 + i % 50 * 10) * interval '1 millisecond' END,
       CASE WHEN i > :rows - 200 THEN NULL ELSE (15 + i % 50 * 10) / 1000.0 END,
       'worker@bench', 0,
       CASE WHEN i % 997 = 0 OR i > :rows - 200 THEN NULL ELSE '{"delivered": true}'::json END,
       CASE WHEN i % 997 = 0 THEN 'HTTPStatusError: 503 from Users' END,
       i % 5003 = 0
FROM generate_series(:first, :last) AS i,
     LATERAL (SELECT now() - (:rows - i) * :gap * interval '1 second' AS ts) AS t
"""


def task_id(i: int) -> str:
    """The id the loader gives row i (md5 of its number, as a UUID)."""
    return str(uuid.UUID(hashlib.md5(str(i).encode()).hexdigest()))


def load(engine: Engine, rows: int, per_hour: int, chunk: int = 500_000) -> float:
    started = time.monotonic()
    for first in range(1, rows + 1, chunk):
        last = min(rows, first + chunk - 1)
        with engine.begin() as conn:
            conn.execute(
                text(LOAD),
                {
                    "rare": list(RARE),
                    "rare_count": len(RARE),
                    "rows": rows,
                    "gap": 3600 / per_hour,
                    "first": first,
                    "last": last,
                },
            )
        print(f"  loaded {last:,} rows ({time.monotonic() - started:.0f} s)", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE task_ledger"))
    return time.monotonic() - started


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and parameters) the API sends while inside."""
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", grab)


class ServerTimes(logging.Handler):
    """The API's own measure of each request (its access line's `duration_ms`): no client in it."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.samples.append(float(getattr(record, "duration_ms", "nan")))


SERVER = ServerTimes()


def timed(call: Callable[[], Any], samples: int) -> tuple[list[float], list[float]]:
    """Client-side times (TestClient, ms) and the API's own, of `samples` calls after a warm one."""
    call()  # warm: connection, statement caches
    SERVER.samples.clear()
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out, list(SERVER.samples)


Figures = dict[str, tuple[list[float], list[float]]]


def measure(client: TestClient, rows: int, samples: int, only_metrics: bool = False) -> Figures:
    rng = random.Random(15)
    headers = {"X-API-Key": ADMIN_KEY}

    def status() -> None:
        path = f"/api/v1/tasks/status/{task_id(rng.randint(1, rows))}"
        response = client.get(path, headers=headers)
        assert response.status_code == 200, response.text

    pages: list[dict[str, Any]] = [
        {"name": "calculate_user_tier", "limit": 50},  # a rare name: 1 row in 1,300
        {"status": "FAILURE", "limit": 50},  # a rare state
        {"name": "send_query_result_to_users", "status": "FAILURE", "limit": 50},
        {"name": "update_user_statistics", "limit": 50},
        {"limit": 50},
    ]
    cursors: dict[int, str] = {}

    def history() -> None:
        n = rng.randrange(len(pages))
        params: dict[str, Any] = dict(pages[n])
        if n in cursors and rng.random() < 0.5:
            params["cursor"] = cursors[n]  # a second page
        response = client.get("/api/v1/tasks/history", params=params, headers=headers)
        assert response.status_code == 200 and response.json()["items"], response.text
        if response.json()["next_cursor"]:
            cursors[n] = response.json()["next_cursor"]

    def metrics() -> None:
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 200 and "ragcore_tasks{" in response.text, response.text

    figures = {"metrics": timed(metrics, max(5, samples // 20))}
    if not only_metrics:
        figures |= {"status": timed(status, samples), "history": timed(history, samples)}
    return figures


def explain(engine: Engine, client: TestClient) -> None:
    headers = {"X-API-Key": ADMIN_KEY}
    requests = {
        "status": (f"/api/v1/tasks/status/{task_id(1)}", {}),
        "history ?name=send_query_result_to_users&status=FAILURE": (
            "/api/v1/tasks/history",
            {"name": "send_query_result_to_users", "status": "FAILURE", "limit": 50},
        ),
        "history ?name=calculate_user_tier": (
            "/api/v1/tasks/history",
            {"name": "calculate_user_tier", "limit": 50},
        ),
        "history ?status=FAILURE": ("/api/v1/tasks/history", {"status": "FAILURE", "limit": 50}),
        "metrics": ("/metrics", {}),
    }
    for label, (path, params) in requests.items():
        with captured(engine) as seen:
            client.get(path, params=params, headers=headers)
        for statement, parameters in seen:
            if "task_ledger" not in statement:
                continue
            with engine.connect() as conn:
                plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
                print(f"\n-- {label}\n" + "\n".join(row[0] for row in plan))


def report(phase: str, figures: Figures) -> dict[str, float]:
    """Print p50 and p99, client-side and in the API; the API's p50 is what targets are read on."""
    p50 = {}
    parts = []
    for k, (client, server) in figures.items():
        p50[k] = percentile(server, 0.5) if server else percentile(client, 0.5)
        parts.append(
            f"{k} p50 {p50[k]:.2f} ms (p99 {percentile(server or client, 0.99):.2f}; "
            f"client-side p50 {percentile(client, 0.5):.2f})"
        )
    print(f"{phase:>9}: " + "  ".join(parts), flush=True)
    return p50


def swap_indexes(engine: Engine, drop: tuple[str, ...], create: tuple[str, ...]) -> float:
    started = time.monotonic()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in drop:
            conn.execute(text(f"DROP INDEX IF EXISTS {statement.split()[2]}"))
        for statement in create:
            conn.execute(text(statement))
        conn.execute(text("ANALYZE task_ledger"))
    return time.monotonic() - started


def floor(samples: int) -> Figures:
    bare = FastAPI()

    @bare.get("/ping")
    def ping() -> dict[str, str]:
        return {"status": "ok"}

    with TestClient(bare) as client:
        return {"request (client-side only)": timed(lambda: client.get("/ping"), samples)}


def run(database_url: str, args: argparse.Namespace) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(database_url)
    print(f"loading {args.rows:,} rows ({args.per_hour:,} per hour of sent_at)...", flush=True)
    print(f"loaded in {load(engine, args.rows, args.per_hour):.0f} s")
    report("floor", floor(args.samples))
    # One app for every phase: a second app in the same process measured slower (threads and
    # pools of the first linger), which would favour whichever phase runs first.
    with TestClient(create_app()) as client:
        results = phases(engine, client, args)
    print(f"\n{args.rows:,} rows: p50 baseline -> head (ratio), head against its target")
    for k, target in TARGETS_MS.items():
        head, base = results["head"][k], results["baseline"][k]
        verdict = "met" if head <= target else "NOT met"
        print(
            f"  {k:8} {base:9.2f} ms -> {head:7.2f} ms  ratio {head / base:6.3f}  "
            f"target {target:g} ms: {verdict} ({head / target:.2f}x)"
        )
    hot = results["hot"]["metrics"]
    verdict = "met" if hot <= TARGETS_MS["metrics"] else "NOT met"
    print(
        f"  metrics with the window just rewritten (hot): {hot:.2f} ms "
        f"({verdict}, {hot / TARGETS_MS['metrics']:.2f}x)"
    )
    snap, head = results["snapshot"]["metrics"], results["head"]["metrics"]
    verdict = "met" if snap <= TARGETS_MS["metrics"] else "NOT met"
    print(
        f"  metrics from Beat's snapshot: {snap:.2f} ms ({verdict}, "
        f"{snap / TARGETS_MS['metrics']:.2f}x; ratio to head {snap / head:.3f}, "
        f"to hot {snap / hot:.3f}); Beat's round {results['snapshot']['round']:.1f} ms"
    )
    engine.dispose()


def phases(
    engine: Engine, client: TestClient, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for phase in ("baseline", "head", "hot", "snapshot"):
        if phase == "snapshot":
            seconds = refresh_snapshot()
        elif phase == "baseline":
            seconds = swap_indexes(engine, NEW_INDEXES, OLD_INDEXES)
        elif phase == "head":
            seconds = swap_indexes(engine, OLD_INDEXES, NEW_INDEXES)
        else:
            started = time.monotonic()
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE task_ledger SET retries = retries "
                        "WHERE sent_at >= now() - interval '1 hour'"
                    )
                )
            seconds = time.monotonic() - started
        print(f"{phase}: prepared in {seconds:.1f} s", flush=True)
        reset_engines()  # new connections: no plan cached from the previous phase
        results[phase] = report(
            phase, measure(client, args.rows, args.samples, only_metrics=phase in LATE)
        )
        if phase == "snapshot":
            results[phase]["round"] = seconds * 1000
        if phase == "head":
            explain(get_engine(), client)
    return results


def refresh_snapshot() -> float:
    """One round of Beat's snapshot thread, timed (seconds)."""
    started = time.monotonic()
    with session_scope() as session:
        snapshot.refresh(session, get_settings().api.metrics_window_seconds, utcnow())
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--per-hour", type=int, default=2_000_000 // 24)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    with redis_server() as redis, postgres_database() as database_url:
        os.environ.update(
            {
                "RAGCORE_ENVIRONMENT": "test",
                "RAGCORE_REDIS_URL": redis.url,
                "RAGCORE_DATABASE_URL": database_url,
                "RAGCORE_LOG_LEVEL": "WARNING",
                "RAGCORE_API_KEYS": f'{{"{ADMIN_KEY}": "admin"}}',
            }
        )
        get_settings.cache_clear()
        access = logging.getLogger("ragcore.access")
        access.setLevel(logging.INFO)
        access.propagate = False
        access.addHandler(SERVER)
        run(database_url, args)


if __name__ == "__main__":
    main()
