"""Benchmark: the local stack under 50 concurrent query clients while a full sync runs (issue 15).

    PYTHONPATH=libs:. python -m tests.benchmarks.load [--users 50 --seconds 60 --documents 10000
        --chunks 12] [--api-url http://127.0.0.1:7001 --ingest-url ... --users-url ...]

Without --api-url it starts the local stack itself (`deploy/local/up` on ports of its own, a
temporary state folder) and stops it at the end; with --api-url it uses a running one (its Ingest
and Users stand-ins are at --ingest-url and --users-url; their corpus and deliveries are reset, and
the full sync it starts is revoked when the load ends).

Two phases, the same load each: locust, headless, `--users` closed-loop clients for `--seconds`
with the query key, a new user id every 50 queries per client, nearly every query a cache miss.

- `baseline`: Qdrant holds the small demo corpus, nothing else runs;
- `full sync`: the Ingest stand-in is given `--documents` × `--chunks` chunks, a full sync is
  started through the API with the admin key, and the load starts once the sync is copying.

After each phase it waits for Beat's report relay and the notifications worker to drain, then
compares the query reports the Users stand-in received (their message ids) with the message ids
of locust's successful queries: they must be equal, with no duplicates. It prints requests/s,
p50/p99 (locust's), errors, and the full-sync phase's ratios to the baseline; it exits non-zero if
any query failed, any report is missing or extra, or the sync did not last the whole load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from deploy.local.stack import PORTS, port_in_use
from ragcore_dev.processes import wait_until

ADMIN_KEY = "dev-admin-key"
QUERY_KEY = "dev-query-key"
LOCUSTFILE = Path(__file__).with_name("load_locustfile.py")
STACK_START_TIMEOUT = 600  # packaging the pex files, then unpacking each once on a fresh machine
DRAIN_TIMEOUT = 300
#: Reports that stop arriving for this long are taken as all there will be.
DRAIN_QUIET_SECONDS = 20
FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class Urls:
    api: str
    ingest: str
    users: str


@dataclass
class Phase:
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    reports: int
    duplicates: int
    missing: int
    extra: int
    errors: list[str]
    sync_progress: str = ""

    @property
    def reports_match(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.duplicates == 0


def _free_offset() -> int:
    # Below the ephemeral range, so no client socket takes a port between this check and the
    # stack's.
    for _ in range(100):
        offset = random.randrange(10_000, 25_000, 10)
        if not any(port_in_use(port + offset) for port in PORTS.values()):
            return offset
    raise RuntimeError("no free block of ports for the stack")


@contextlib.contextmanager
def local_stack(root: Path, database_url: str | None = None) -> Iterator[Urls]:
    """`deploy/local/up` on free ports with state in `root` (and its database at `database_url`,
    SQLite in `root` by default); stopped (every part) on exit."""
    offset = _free_offset()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if database_url:
        env["RAGCORE_DATABASE_URL"] = database_url
    output = root / "stack.out"
    with output.open("wb") as out:
        # No initial sync: each phase sets the corpus it needs.
        process = subprocess.Popen(
            [
                "./deploy/local/up",
                "--root",
                str(root / "state"),
                "--port-offset",
                str(offset),
                "--no-initial-sync",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def running() -> bool:
            if process.poll() is not None:
                tail = output.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the stack exited with {process.returncode}:\n{tail}")
            return "ragcore is running" in output.read_text(errors="replace")

        print(f"starting the local stack (port offset {offset}; output in {output})", flush=True)
        wait_until(running, STACK_START_TIMEOUT, "the local stack", interval=0.5)
        yield Urls(*(f"http://127.0.0.1:{PORTS[p] + offset}" for p in ("api", "ingest", "users")))
    finally:
        # The stack stops its parts in order on SIGTERM and kills what lingers.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def reset_ingest(urls: Urls, documents: int, chunks: int) -> None:
    corpus = {"documents": documents, "chunks": chunks}
    response = httpx.post(f"{urls.ingest}/_control/reset", json=corpus, timeout=600)
    response.raise_for_status()


def start_full_sync(api: httpx.Client) -> str:
    response = api.post("/api/v1/sync/trigger-full-sync")
    if response.status_code != 202:
        raise RuntimeError(f"the full sync was refused: {response.status_code} {response.text}")
    return str(response.json()["task_id"])


def task_status(api: httpx.Client, task_id: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"/api/v1/tasks/status/{task_id}").json()
    return status


def wait_task(api: httpx.Client, task_id: str, timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = task_status(api, task_id)
        return status if status["status"] in FINISHED else None

    status = wait_until(finished, timeout, f"task {task_id}", interval=0.5)
    assert isinstance(status, dict)
    return status


def run_locust(
    urls: Urls, users: int, seconds: int, workdir: Path, run: str
) -> tuple[dict[str, Any], set[str]]:
    """locust headless; its totals and the message ids of the successful queries."""
    results = workdir / f"{run}.json"
    env = {**os.environ, "LOAD_QUERY_KEY": QUERY_KEY, "LOAD_RUN": run, "LOAD_RESULTS": str(results)}
    # Exit code 1 means some requests failed: the totals say how many, so it is not an error here.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            urls.api,
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{seconds}s",
            "--stop-timeout",
            "30",
            "--only-summary",
            "--loglevel",
            "WARNING",
        ],
        env=env,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"locust exited with {done.returncode}")
    written: dict[str, Any] = json.loads(results.read_text())
    return written["stats"], set(written["message_ids"])


def received_reports(urls: Urls) -> tuple[list[str], int]:
    """Message ids of the query reports Users recorded, and the repeats it refused."""
    kind = {"kind": "query-results"}
    body = httpx.get(f"{urls.users}/_control/deliveries", params=kind, timeout=60).json()
    ids = [d["payload"]["message_id"] for d in body["deliveries"]]
    return ids, int(body["duplicates"]["query-results"])


def wait_reports(urls: Urls, expected: int) -> None:
    """Until Users has `expected` query reports, or none arrived for DRAIN_QUIET_SECONDS."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(received_reports(urls)[0])
        if count >= expected:
            return
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > DRAIN_QUIET_SECONDS:
            return
        time.sleep(2)


def measure(
    name: str,
    urls: Urls,
    args: argparse.Namespace,
    workdir: Path,
    run: str,
    api: httpx.Client,
    sync_task: str | None,
) -> Phase:
    httpx.post(f"{urls.users}/_control/reset", timeout=10).raise_for_status()
    print(f"\n{name}: {args.users} clients for {args.seconds} s", flush=True)
    stats, ok_ids = run_locust(urls, args.users, args.seconds, workdir, run)
    progress = ""
    if sync_task is not None:
        status = task_status(api, sync_task)
        progress = f"{status['status']} {status.get('progress')}"
        print(f"  full sync when the load stopped: {progress}", flush=True)
        if status["status"] in FINISHED:
            progress = f"finished before the load stopped: {progress}"
    wait_reports(urls, len(ok_ids))
    reported, duplicates = received_reports(urls)
    reported_set = set(reported)
    return Phase(
        name=name,
        requests=stats["requests"],
        failures=stats["failures"],
        rps=stats["rps"],
        p50_ms=stats["p50_ms"],
        p99_ms=stats["p99_ms"],
        errors=stats["errors"],
        reports=len(reported),
        duplicates=duplicates + len(reported) - len(reported_set),
        missing=len(ok_ids - reported_set),
        extra=len(reported_set - ok_ids),
        sync_progress=progress,
    )


def report(phases: list[Phase]) -> str:
    lines = [
        f"{'phase':<10} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'reports':>7} {'missing':>7} {'extra':>5} {'dup':>4}"
    ]
    for p in phases:
        lines.append(
            f"{p.name:<10} {p.requests:>8} {p.failures:>6} {p.rps:>7.1f} {p.p50_ms:>7.0f} "
            f"{p.p99_ms:>7.0f} {p.reports:>7} {p.missing:>7} {p.extra:>5} {p.duplicates:>4}"
        )
    if len(phases) == 2 and phases[0].rps and phases[0].p50_ms and phases[0].p99_ms:
        base, load = phases
        lines.append(
            f"full sync ÷ baseline: req/s {load.rps / base.rps:.2f}, "
            f"p50 {load.p50_ms / base.p50_ms:.2f}, p99 {load.p99_ms / base.p99_ms:.2f}"
        )
    return "\n".join(lines)


def run(urls: Urls, args: argparse.Namespace) -> int:
    tag = f"load-{int(time.time())}"
    phases: list[Phase] = []
    with (
        tempfile.TemporaryDirectory(prefix="ragcore-load-") as tmp,
        httpx.Client(base_url=urls.api, headers={"X-API-Key": ADMIN_KEY}, timeout=30) as api,
    ):
        workdir = Path(tmp)
        # The baseline's collection: the demo corpus, synced before any load.
        reset_ingest(urls, args.baseline_documents, 5)
        status = wait_task(api, start_full_sync(api), 300)
        print(f"baseline corpus synced: {status['status']} {status['result']}", flush=True)
        if not args.no_baseline:
            phases.append(measure("baseline", urls, args, workdir, f"{tag}-base", api, None))

        print(f"\ngiving Ingest {args.documents} × {args.chunks} chunks", flush=True)
        reset_ingest(urls, args.documents, args.chunks)
        sync_task = start_full_sync(api)

        def copying() -> bool:
            return (task_status(api, sync_task).get("progress") or {}).get("stage") == "copying"

        wait_until(copying, 120, "the full sync to start copying", interval=0.2)
        phases.append(measure("full sync", urls, args, workdir, f"{tag}-sync", api, sync_task))
        # The sync is not what is measured: stop it rather than wait for it on a busy machine.
        api.post(f"/api/v1/tasks/revoke/{sync_task}", params={"terminate": "true"})

    print("\n" + report(phases), flush=True)
    for phase in phases:
        for error in phase.errors:
            print(f"  {phase.name} error: {error}", flush=True)
    ok = all(p.failures == 0 and p.reports_match for p in phases)
    covered = not phases[-1].sync_progress.startswith("finished")
    if not covered:
        print("the full sync ended before the load did: raise --documents or --chunks", flush=True)
    print("errors 0 and reports = successful queries: " + ("yes" if ok else "NO"), flush=True)
    return 0 if ok and covered else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=50, help="concurrent query clients")
    parser.add_argument("--seconds", type=int, default=60, help="load duration of each phase")
    parser.add_argument("--documents", type=int, default=10_000, help="the full sync's corpus")
    parser.add_argument("--chunks", type=int, default=12, help="chunks per document, full sync")
    parser.add_argument(
        "--baseline-documents", type=int, default=20, help="the corpus queried in the baseline"
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--api-url", help="a running stack's API (default: start the local stack)")
    parser.add_argument("--ingest-url", default=f"http://127.0.0.1:{PORTS['ingest']}")
    parser.add_argument("--users-url", default=f"http://127.0.0.1:{PORTS['users']}")
    args = parser.parse_args()
    if args.api_url:
        sys.exit(run(Urls(args.api_url, args.ingest_url, args.users_url), args))
    with (
        tempfile.TemporaryDirectory(prefix="ragcore-load-stack-") as root,
        local_stack(Path(root)) as urls,
    ):
        code = run(urls, args)
    sys.exit(code)


if __name__ == "__main__":
    main()
