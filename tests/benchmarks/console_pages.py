"""Benchmark: every console page on a ledger of 1M rows, against the JSON API's equivalent route,
same app, same data, same run.

    PYTHONPATH=libs:. python -m tests.benchmarks.console_pages [--rows 1000000] [--samples 40]

The ledger is filled as tests/benchmarks/task_api_scale.py fills it (`generate_series` in a fresh
PostgreSQL database migrated to head: ~83,000 rows in the last hour, 2 % rare names, ~0.1 %
failures), plus 2,000 failed deliveries. The app answers through Starlette's TestClient; the figure
is the API's own time per request (its access line), p50 of `--samples` after a warm call. Printed
per page: the console's p50, its JSON twin's, their ratio, and the page against the 100 ms target.
A picture is timed twice: aggregated from the ledger (no snapshot, as an API without Beat draws it;
its twin /metrics too) and drawn from Beat's snapshot (`ragcore.tasks.ledger.snapshot`, refreshed
just before, as Beat's thread keeps it), with how long Beat's round takes on this ledger.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, delete, text

from api.main import create_app
from ragcore.db import migrate, session_scope, utcnow
from ragcore.db.models import LedgerSnapshot
from ragcore.settings import get_settings
from ragcore.tasks.ledger import snapshot
from ragcore_dev.servers import postgres_database, redis_server
from tests.benchmarks.common import percentile
from tests.benchmarks.task_api_scale import ADMIN_KEY, SERVER, load, task_id, timed

TARGET_MS = 100.0

DELIVERIES = """
INSERT INTO failed_deliveries (task_name, task_id, payload, error, attempts, status, created_at,
                               next_attempt_at, waiting_since)
SELECT 'send_query_result_to_users', md5(i::text), '{}'::json, 'HTTP 503 from Users', 4,
       CASE WHEN i % 2 = 0 THEN 'waiting' ELSE 'failed' END, now() - i * interval '1 second',
       now() + interval '10 minutes', now() - i * interval '1 second'
FROM generate_series(1, 2000) AS i
"""


def pairs(rows: int) -> dict[str, tuple[str, str | None]]:
    """Console page -> the JSON route answering the same question (None: the JSON API has none)."""
    some = task_id(rows // 2)
    return {
        "overview": ("/console", "/api/v1/tasks/queues"),
        "picture: queues (aggregated)": ("/console/charts/queues.svg", "/metrics"),
        "picture: queues (snapshot)": ("/console/charts/queues.svg", "/metrics"),
        "picture: durations (aggregated)": ("/console/charts/durations.svg", "/metrics"),
        "picture: durations (snapshot)": ("/console/charts/durations.svg", "/metrics"),
        "tasks": ("/console/tasks", "/api/v1/tasks/history?limit=50"),
        "tasks ?name=rare": (
            "/console/tasks?name=calculate_user_tier",
            "/api/v1/tasks/history?name=calculate_user_tier&limit=50",
        ),
        "tasks ?state=FAILURE": (
            "/console/tasks?state=FAILURE",
            "/api/v1/tasks/history?status=FAILURE&limit=50",
        ),
        "tasks ?queue=user": ("/console/tasks?queue=user", None),
        # A queue and a worker no row has (the loader fills notifications and user only): read
        # along the sent_at index to its end, the worst case of these two filters.
        "tasks ?queue=cleanup (none)": ("/console/tasks?queue=cleanup", None),
        "tasks ?worker=": ("/console/tasks?worker=worker%40bench", None),
        "tasks ?worker=absent (none)": ("/console/tasks?worker=nobody%40nowhere", None),
        "tasks ?id=prefix(8)": (f"/console/tasks?id={some[:8]}", None),
        "tasks ?since&until": (
            "/console/tasks?since=2026-01-01T00:00&until=2100-01-01T00:00",
            None,
        ),
        "task": (f"/console/tasks/{some}", f"/api/v1/tasks/status/{some}"),
        "task progress": (f"/console/tasks/{some}/progress", f"/api/v1/tasks/status/{some}"),
        "deliveries": (
            "/console/deliveries?status=waiting",
            "/api/v1/deliveries/failed?status=waiting",
        ),
        "deliveries: bulk count": (
            "/console/deliveries/redrive?task_name=send_query_result_to_users",
            None,
        ),
        "workers": ("/console/workers", "/api/v1/tasks/workers"),
        "dead letters": ("/console/dead-letters", None),
    }


def sign_in(client: TestClient) -> None:
    form = client.get("/console/sign-in").text
    match = re.search(r'name="csrf" value="([^"]+)"', form)
    assert match
    response = client.post("/console/sign-in", data={"key": ADMIN_KEY, "csrf": match.group(1)})
    assert response.status_code == 200 and "Overview" in response.text, response.text


def p50(client: TestClient, path: str, samples: int, headers: dict[str, str]) -> float:
    def call() -> None:
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])

    client_side, server = timed(call, samples)
    return percentile(server or client_side, 0.5)


def snapshot_state(label: str) -> float | None:
    """None snapshot for the aggregated pictures, a fresh one for every other page; returns how
    long Beat's round took, when one ran."""
    with session_scope() as session:
        if "(aggregated)" in label:
            session.execute(delete(LedgerSnapshot))
            return None
        started = time.perf_counter()
        snapshot.refresh(session, get_settings().api.metrics_window_seconds, utcnow())
    return (time.perf_counter() - started) * 1000


def run(database_url: str, args: argparse.Namespace) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(database_url)
    print(f"loading {args.rows:,} rows ({args.per_hour:,} per hour of sent_at)...", flush=True)
    print(f"loaded in {load(engine, args.rows, args.per_hour):.0f} s")
    with engine.begin() as conn:
        conn.execute(text(DELIVERIES))
    engine.dispose()
    with TestClient(create_app()) as client:
        sign_in(client)
        print(f"\n{args.rows:,} rows, p50 of {args.samples} (the API's own time per request)")
        print(
            f"  {'page':24} {'console':>10} {'JSON twin':>10} {'ratio':>7}  target {TARGET_MS:g} ms"
        )
        met = 0
        table = pairs(args.rows)
        rounds = []
        for label, (page, twin) in table.items():
            if (took := snapshot_state(label)) is not None:
                rounds.append(took)
            console = p50(client, page, args.samples, {})
            json_ms = p50(client, twin, args.samples, {"X-API-Key": ADMIN_KEY}) if twin else None
            ratio = f"{console / json_ms:7.2f}" if json_ms else "      –"
            twin_text = f"{json_ms:7.2f} ms" if json_ms is not None else "         –"
            verdict = "met" if console <= TARGET_MS else "NOT met"
            met += console <= TARGET_MS
            print(f"  {label:28} {console:7.2f} ms {twin_text} {ratio}  {verdict}", flush=True)
        print(f"  {met} of {len(table)} pages within {TARGET_MS:g} ms")
        print(f"  Beat's snapshot round: p50 {percentile(rounds, 0.5):.1f} ms of {len(rounds)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--per-hour", type=int, default=2_000_000 // 24)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with redis_server() as redis, postgres_database() as database_url:
        os.environ.update(
            {
                "RAGCORE_ENVIRONMENT": "test",
                "RAGCORE_REDIS_URL": redis.url,
                "RAGCORE_DATABASE_URL": database_url,
                "RAGCORE_LOG_LEVEL": "WARNING",
                "RAGCORE_API_KEYS": f'{{"{ADMIN_KEY}": "admin"}}',
                # No worker runs here: the workers route's broadcast waits this long for none.
                "RAGCORE_INSPECT_TIMEOUT_SECONDS": "0.05",
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
