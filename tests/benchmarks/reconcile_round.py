"""Benchmark: one reconcile round with 10,000 and with 1,000,000 tasks waiting, same run.

    PYTHONPATH=libs:. python -m tests.benchmarks.reconcile_round [--sizes 10000 1000000]

Per size: a fresh PostgreSQL database migrated to head, its ledger filled in the server (a
`generate_series` loader) with that many PENDING deliveries sent an hour ago, and a private Redis
whose `notifications` list holds as many messages and whose waiting set (ragcore.broker.held) their
ids; the last 100 rows are lost (neither in the list nor in the set), as after a partial failover.
Timed: `reconcile_round` as Beat runs it (a batch of `reconcile_batch_size` rows, the broker asked
about each), median of `--rounds`; the lost rows are reached when the cursor gets to them and are
published again. The baseline, same data: what a round that read the queue itself would pay just to
list the ids waiting (LRANGE of the whole list, each message's JSON parsed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import redis
from sqlalchemy import create_engine, text

from ragcore.broker import held
from ragcore.db import migrate, reset_engines
from ragcore.settings import get_settings
from ragcore.tasks import contracts
from ragcore.tasks.app import create_app
from ragcore.tasks.reconcile import reconcile_round
from ragcore_dev.servers import postgres_database, redis_server

LOST = 100
QUEUE = contracts.Queue.NOTIFICATIONS.value

LOAD = """
INSERT INTO task_ledger (task_id, name, queue, state, kwargs, sent_at, retries, revoked)
SELECT 'bench-' || i, 'send_query_result_to_users', 'notifications', 'PENDING',
       json_build_object('user_id', 'u', 'conversation_id', 'c', 'message_id', 'm-' || i,
                         'query', 'q', 'answer', 'a', 'sources', json_build_array(),
                         'tokens_used', 1, 'processing_time_ms', 1.0),
       now() - interval '1 hour' + i * interval '1 microsecond', 0, false
FROM generate_series(1, :rows) AS i
"""


@contextmanager
def environment(rows: int) -> Iterator[tuple[redis.Redis, float]]:
    """A database and a Redis holding `rows` waiting tasks; yields the client and the load time."""
    with redis_server() as server, postgres_database() as database_url:
        os.environ.update(
            RAGCORE_REDIS_URL=server.url,
            RAGCORE_DATABASE_URL=database_url,
            RAGCORE_WORKER_HEARTBEAT_SECONDS="1",
            RAGCORE_RECONCILE_GRACE_SECONDS="60",
        )
        get_settings.cache_clear()
        reset_engines()
        started = time.monotonic()
        migrate.upgrade(database_url)
        engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.execute(text(LOAD), {"rows": rows})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE task_ledger"))
        engine.dispose()
        client = redis.Redis.from_url(server.url)
        waiting = rows - LOST
        for first in range(1, waiting + 1, 10_000):
            ids = [f"bench-{i}" for i in range(first, min(waiting, first + 9_999) + 1)]
            pipe = client.pipeline(transaction=False)
            pipe.lpush(QUEUE, *(orjson.dumps({"headers": {"id": i}, "body": ""}) for i in ids))
            pipe.zadd(held.PUBLISHED_KEY.format(queue=QUEUE), dict.fromkeys(ids, 0.0))
            pipe.execute()
        # A Redis that has just been seen would settle first: make it seen long ago.
        client.set("ragcore:reconcile:since", 0)
        yield client, time.monotonic() - started


def baseline(client: redis.Redis) -> float:
    started = time.perf_counter()
    ids = {orjson.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)}
    assert ids
    return time.perf_counter() - started


def measure(rows: int, rounds: int) -> tuple[float, float, int]:
    with environment(rows) as (client, loaded):
        print(f"{rows:>9,} waiting: loaded in {loaded:.0f} s", flush=True)
        settings = get_settings()
        app = create_app("bench", settings)
        times = []
        republished = 0
        for _ in range(rounds):
            started = time.perf_counter()
            result = reconcile_round(app, settings, client=client)
            times.append(time.perf_counter() - started)
            republished += sum(result.acted.values())
        naive = baseline(client)
        app.close()
        reset_engines()
        return statistics.median(times), naive, republished


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    results = {size: measure(size, options.rounds) for size in options.sizes}
    batch = get_settings().reconcile.batch_size
    print(f"\nreconcile round (batch {batch} rows), median of {options.rounds}:")
    for size, (round_s, naive, republished) in results.items():
        print(
            f"  {size:>9,} waiting: round {round_s * 1000:8.1f} ms   "
            f"baseline (read the queue) {naive * 1000:9.1f} ms   re-published {republished}"
        )
    small, large = min(results), max(results)
    if small != large:
        print(
            f"  round {large:,} / {small:,}: {results[large][0] / results[small][0]:.2f}x   "
            f"baseline: {results[large][1] / results[small][1]:.1f}x"
        )


if __name__ == "__main__":
    main()
