"""Benchmark: `update_user_statistics` for a user with 100 messages and one with 1,000,000.

    PYTHONPATH=libs:. python -m tests.benchmarks.user_statistics [--big 1000000 --runs 30]

PostgreSQL, a fresh database at the migrations' head. Both users have the same last 30 days (100
messages: what their tier reads), the big one has its history besides (one message every ~3
minutes, years back, counted already, as they are once the task has run). Each run adds one new
message to the user and times the task's body (counting what is new, then the tier) in its own
transaction. The baseline, measured in the same run: the aggregate over all the user's messages
that the task ran before (services/user/stats.py before revision 0011).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from sqlalchemy import func, select, text

from ragcore.db import create_schema, get_engine, session_scope, utcnow
from ragcore.db.models import Message
from ragcore.settings import Settings
from ragcore_dev.servers import postgres_database
from services.user import stats, tiers

SMALL, BIG = "user-100", "user-big"


def seed(url: str, user: str, messages: int) -> None:
    """`messages` of `user`: the last 100 in the past 30 days, the rest further back, counted."""
    recent = min(100, messages)
    with get_engine(url).begin() as conn:
        conn.execute(
            text(
                "INSERT INTO conversations (id, user_id, created_at, updated_at) "
                "VALUES (:c, :u, now(), now())"
            ),
            {"c": f"c-{user}", "u": user},
        )
        conn.execute(
            text(
                "INSERT INTO messages (id, conversation_id, user_id, query, answer, sources, "
                "tokens_used, processing_time_ms, created_at, reported_at, stats_counted_at) "
                "SELECT :u || '-' || g, :c, :u, 'q', 'a', '[]', 5, 10.0, "
                "CASE WHEN g <= :recent THEN now() - g * interval '6 hours' "
                "ELSE now() - interval '31 days' - g * interval '3 minutes' END, now(), now() "
                "FROM generate_series(1, :n) AS g"
            ),
            {"u": user, "c": f"c-{user}", "n": messages, "recent": recent},
        )
        conn.execute(text("ANALYZE messages"))
    with session_scope(url) as session:  # the counters as the task has kept them
        session.execute(
            text("UPDATE messages SET stats_counted_at = NULL WHERE id = :i"), {"i": f"{user}-1"}
        )
        stats.count_new(session, user)


def one_run(url: str, user: str, settings: Settings) -> float:
    with session_scope(url) as session:
        session.add(
            Message(
                id=str(uuid.uuid4()),
                conversation_id=f"c-{user}",
                user_id=user,
                query="q",
                answer="a",
                sources=[],
                tokens_used=5,
                processing_time_ms=10.0,
                created_at=utcnow(),
            )
        )
    started = time.perf_counter()
    with session_scope(url) as session:  # services.user.tasks.update_user_statistics
        stats.count_new(session, user)
        tiers.set_tier(session, user, settings.tiers, utcnow())
    return time.perf_counter() - started


def full_aggregate(url: str, user: str) -> float:
    started = time.perf_counter()
    with session_scope(url) as session:
        session.execute(
            select(
                func.count(),
                func.sum(Message.tokens_used),
                func.avg(Message.processing_time_ms),
                func.max(Message.created_at),
            ).where(Message.user_id == user)
        ).one()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    settings = Settings()
    with postgres_database() as url:
        create_schema(url)
        started = time.perf_counter()
        seed(url, SMALL, 100)
        seed(url, BIG, args.big)
        print(f"seeded 100 + {args.big:,} messages in {time.perf_counter() - started:.1f} s")
        for user in (SMALL, BIG):  # warm both
            one_run(url, user, settings)
        samples: dict[str, list[float]] = {SMALL: [], BIG: []}
        for _ in range(args.runs):  # alternating, so the machine's drift falls on both
            for user in (SMALL, BIG):
                samples[user].append(one_run(url, user, settings))
        medians = {user: statistics.median(times) for user, times in samples.items()}
        baseline = {user: min(full_aggregate(url, user) for _ in range(5)) for user in (SMALL, BIG)}
        get_engine(url).dispose()
    print(f"update_user_statistics, median of {args.runs} runs:")
    print(f"  100 messages:        {medians[SMALL] * 1000:8.2f} ms")
    print(f"  {args.big:,} messages: {medians[BIG] * 1000:8.2f} ms")
    print(f"  ratio big/small:     {medians[BIG] / medians[SMALL]:8.2f}")
    print("baseline (the aggregate over every message it ran before), best of 5:")
    print(f"  100 messages:        {baseline[SMALL] * 1000:8.2f} ms")
    print(f"  {args.big:,} messages: {baseline[BIG] * 1000:8.2f} ms")
    print(f"  ratio big/small:     {baseline[BIG] / baseline[SMALL]:8.2f}")


if __name__ == "__main__":
    main()
