"""Benchmark: CPU of every process of the local stack per answered query (issue 20, point 2).

    nice -n -10 env PYTHONPATH=libs:. python -m tests.benchmarks.system_cpu \\
        [--users 8 --seconds 20 --documents 2000 --chunks 5] \\
        [--profile-api OUT] [--profile PART=OUT ...] [--py-spy PATH] \\
        [--database-url postgresql://postgres@127.0.0.1:5432/test] [--keep DIR]

Starts the embedded default stack (`deploy/local/up` on ports of its own, a temporary state folder:
SQLite, the stack's Redis, the Qdrant stand-in; with `--database-url`, a fresh database on that
PostgreSQL server instead of SQLite, created for the run and dropped after it), syncs `--documents`
× `--chunks` chunks, then loads it as tests.benchmarks.load does (locust, `--users` closed-loop
clients, nearly every query a cache miss). Each part's CPU time (user + system of its process and
its children, a worker's pool, from /proc/<pid>/stat) is read before the load and again once every
report was delivered, so the deliveries the load caused are counted; each part's idle CPU, read
over 5 s just before the load, is shown beside it. `--keep DIR` keeps the stack's folder (its
logs) after the run.

Prints per part: CPU ms per answered query, idle CPU ms per second; the total; q/s, p50, p99; and
whether Users received each query's report once and the user worker counted every message in the
users' statistics. Exits non-zero if any query failed or a report or statistics update is missing.

`--profile-api OUT` also samples the API process with py-spy during the load (a raw collapsed-stack
file at OUT, its top functions printed); `--profile PART=OUT` any part (a name of the table), with
its children (a worker's pool). py-spy is not in the lockfile: pass its binary with `--py-spy`
(e.g. from `pip install py-spy` in a virtualenv of its own). Sampling costs the sampled part CPU:
read that run's table as indicative only. It also prints the Redis commands per answered query
(the stack's Redis, INFO commandstats over the load).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from deploy.local.stack import PORTS
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import postgres_database
from tests.benchmarks.load import (
    ADMIN_KEY,
    Urls,
    local_stack,
    received_reports,
    reset_ingest,
    run_locust,
    start_full_sync,
    wait_reports,
    wait_task,
)

#: Idle CPU is read over this long before the load.
IDLE_SECONDS = 5.0
STATISTICS_TIMEOUT = 120
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command (which may hold spaces), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1]: ppid
    return tree


def cpu_seconds(pid: int, tree: dict[int, list[int]]) -> float:
    """User + system CPU of `pid` and its live descendants, plus what their reaped children used."""
    ticks = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        fields = _stat(current)
        if fields is None:
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        todo += tree.get(current, [])
    return ticks / CLOCK_TICKS


def parts(state: Path) -> dict[str, int]:
    """The stack's parts and their pids (`deploy/local/up` writes ROOT/pids/<part>.pid)."""
    return {
        pid_file.stem: int(pid_file.read_text())
        for pid_file in sorted((state / "pids").glob("*.pid"))
        if pid_file.stem != "stack"
    }


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    tree = _children()
    return {name: cpu_seconds(pid, tree) for name, pid in pids.items()}


def redis_commands(urls: Urls) -> Counter[str]:
    """The stack's Redis: how many times it ran each command so far."""
    port = int(urls.api.rsplit(":", 1)[1]) - PORTS["api"] + PORTS["redis"]
    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()})


def uncounted_messages(database_url: str, run: str) -> int:
    """The run's messages the user worker has not added to their users' statistics yet."""
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as db:
            count = db.scalar(
                text(
                    "SELECT count(*) FROM messages"
                    " WHERE user_id LIKE :run AND stats_counted_at IS NULL"
                ),
                {"run": f"{run}-%"},
            )
    finally:
        engine.dispose()
    return int(count or 0)


@dataclass
class Result:
    answered: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    reports: int
    missing: int
    duplicates: int
    uncounted: int
    window_s: float
    busy: dict[str, float]  # CPU seconds per part over the window
    idle: dict[str, float]  # CPU seconds per second per part, before the load

    @property
    def delivered(self) -> bool:
        return self.missing == 0 and self.duplicates == 0 and self.uncounted == 0


def table(result: Result) -> str:
    n = max(1, result.answered)
    lines = [f"{'part':<22} {'ms CPU/query':>12} {'idle ms/s':>10}"]
    for name in sorted(result.busy, key=lambda k: -result.busy[k]):
        lines.append(
            f"{name:<22} {result.busy[name] * 1000 / n:>12.2f} {result.idle[name] * 1000:>10.1f}"
        )
    lines.append(f"{'total':<22} {sum(result.busy.values()) * 1000 / n:>12.2f}")
    lines.append(
        f"answered {result.answered} (errors {result.failures})"
        f" in a {result.window_s:.1f} s window; {result.rps:.1f} q/s,"
        f" p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms"
        f" (p99/p50 {result.p99_ms / max(result.p50_ms, 1e-9):.1f})"
    )
    lines.append(
        f"reports received {result.reports}, missing {result.missing}, duplicates"
        f" {result.duplicates}; messages not in statistics {result.uncounted}"
    )
    return "\n".join(lines)


def profiles(args: argparse.Namespace) -> dict[str, str]:
    """The parts to sample with py-spy and their output files: `--profile PART=OUT`,
    `--profile-api OUT`."""
    chosen = dict(spec.split("=", 1) for spec in args.profile)
    if args.profile_api:
        chosen["api"] = args.profile_api
    return chosen


def top_functions(raw: Path, part: str = "api", count: int = 25) -> str:
    """The hottest functions of a py-spy raw (collapsed) profile: own and inclusive share."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    total = max(total, 1)
    lines = [f"py-spy: {total} samples of {part}", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(count)]
    lines.append("own:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(count)]
    return "\n".join(lines)


def run(urls: Urls, state: Path, database_url: str, args: argparse.Namespace) -> int:
    run_tag = f"cpu-{int(time.time())}"
    with (
        tempfile.TemporaryDirectory(prefix="ragcore-system-cpu-") as tmp,
        httpx.Client(base_url=urls.api, headers={"X-API-Key": ADMIN_KEY}, timeout=30) as api,
    ):
        reset_ingest(urls, args.documents, args.chunks)
        status = wait_task(api, start_full_sync(api), 900)
        print(f"corpus synced: {status['status']} {status['result']}", flush=True)
        httpx.post(f"{urls.users}/_control/reset", timeout=10).raise_for_status()
        pids = parts(state)
        # A warm-up, so the first queries' one-time costs (imports, connections) are not counted.
        run_locust(urls, args.users, 3, Path(tmp), f"{run_tag}-warm")
        wait_reports(urls, 1)
        time.sleep(2)
        httpx.post(f"{urls.users}/_control/reset", timeout=10).raise_for_status()

        before_idle = snapshot(pids)
        time.sleep(IDLE_SECONDS)
        before = snapshot(pids)
        commands_before = redis_commands(urls)
        idle = {k: (before[k] - before_idle[k]) / IDLE_SECONDS for k in pids}
        started = time.monotonic()
        spies = [
            subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "--pid",
                    str(pids[part]),
                    "--duration",
                    str(args.seconds),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--gil",  # the thread holding the GIL: where the Python CPU goes
                    # and a part's children (a worker's pool)
                    *([] if part == "api" else ["--subprocesses"]),
                    "--output",
                    out,
                ],
                stdout=subprocess.DEVNULL,
            )
            for part, out in profiles(args).items()
        ]
        print(f"\nload: {args.users} clients for {args.seconds} s", flush=True)
        stats, ok_ids = run_locust(urls, args.users, args.seconds, Path(tmp), run_tag)
        wait_reports(urls, len(ok_ids))
        wait_until(
            lambda: uncounted_messages(database_url, run_tag) == 0,
            STATISTICS_TIMEOUT,
            "the user statistics",
            interval=0.5,
        )
        after = snapshot(pids)
        commands = redis_commands(urls) - commands_before
        window = time.monotonic() - started
        reported, duplicates = received_reports(urls)
        for spy in spies:
            spy.wait()
    result = Result(
        answered=len(ok_ids),
        failures=stats["failures"],
        rps=stats["rps"],
        p50_ms=stats["p50_ms"],
        p99_ms=stats["p99_ms"],
        reports=len(reported),
        missing=len(ok_ids - set(reported)),
        duplicates=duplicates + len(reported) - len(set(reported)),
        uncounted=uncounted_messages(database_url, run_tag),
        window_s=window,
        busy={k: after[k] - before[k] for k in pids},
        idle=idle,
    )
    print("\n" + table(result), flush=True)
    per_query = ", ".join(
        f"{name} {n / max(1, result.answered):.2f}" for name, n in commands.most_common(12)
    )
    print(
        f"Redis commands per answered query: {commands.total() / max(1, result.answered):.1f}"
        f" ({per_query})",
        flush=True,
    )
    for part, out in profiles(args).items():
        print("\n" + top_functions(Path(out), part), flush=True)
    ok = result.failures == 0 and result.delivered
    print("errors 0, every report and statistics update delivered: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=8, help="concurrent query clients")
    parser.add_argument("--seconds", type=int, default=20, help="load duration")
    parser.add_argument("--documents", type=int, default=2000, help="documents synced")
    parser.add_argument("--chunks", type=int, default=5, help="chunks per document")
    parser.add_argument("--profile-api", metavar="OUT", help="py-spy the API into OUT (raw)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="PART=OUT",
        help="py-spy the part (as in the table, e.g. worker-user) into OUT (raw); repeatable",
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy binary")
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="run the stack on a fresh database of this PostgreSQL server (default: SQLite)",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="the stack's folder (state, logs), kept after the run"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as scope:
        root = (
            Path(args.keep)
            if args.keep
            else Path(scope.enter_context(tempfile.TemporaryDirectory(prefix="ragcore-cpu-")))
        )
        root.mkdir(parents=True, exist_ok=True)
        database_url = (
            scope.enter_context(postgres_database(args.database_url))
            if args.database_url
            else f"sqlite:///{root / 'state' / 'ragcore.db'}"
        )
        print(f"database: {database_url}", flush=True)
        # Entered after the database: the stack stops before its database is dropped.
        urls = scope.enter_context(local_stack(root, args.database_url and database_url))
        code = run(urls, root / "state", database_url, args)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
