"""The one-command local stack (deploy/local) as `./deploy/local/up` runs it: every part from its
pex.

One stack per module, from a clean state folder on ports of its own; the last test stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.stack import PORTS, port_in_use
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import unavailable

ADMIN = {"X-API-Key": "dev-admin-key"}
QUERY = {"X-API-Key": "dev-query-key"}
#: Under `./pants test` the pex files sit in the sandbox; in a checkout, where ./pants package put
#: them.
DIST = Path(".") if Path("deploy.local/stack.pex").exists() else Path("dist")
DOCUMENTS = 12
START_TIMEOUT = 240  # a fresh machine unpacks every pex once


@dataclass
class RunningStack:
    root: Path
    process: subprocess.Popen[bytes]
    output_path: Path
    offset: int

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{PORTS[part] + self.offset}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{PORTS['redis'] + self.offset}/0"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the stack exited with {self.process.returncode}:\n{self.output()[-4000:]}"
                )
            return re.search(pattern, self.output())

        match = wait_until(found, timeout, f"{pattern!r} in the stack's output", interval=0.2)
        assert isinstance(match, re.Match)
        return match

    def pid(self, part: str) -> int | None:
        path = self.root / "pids" / f"{part}.pid"
        return int(path.read_text()) if path.exists() else None

    def api(self, headers: dict[str, str] = ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.url("api"), headers=headers, timeout=30)


def _free_offset() -> int:
    # Below the ephemeral range, so no client socket takes a port between this check and the
    # stack's.
    for _ in range(100):
        offset = random.randrange(10_000, 25_000, 10)
        if not any(port_in_use(port + offset) for port in PORTS.values()):
            return offset
    raise RuntimeError("no free block of ports for the stack")


def _process_groups(groups: set[int]) -> list[int]:
    """Live (not zombie) processes in any of these process groups, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        # the command, in parentheses, may hold spaces
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) in groups and state != "Z":
            found.append(int(entry.name))
    return found


def _env() -> dict[str, str]:
    # As a developer's shell: no test settings, no sandbox import path, no pex variables of the
    # runner.
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAGCORE_", "PEX_", "__PEX_")) and k != "PYTHONPATH"
    }


@pytest.fixture(scope="module")
def local() -> Iterator[RunningStack]:
    if not (DIST / "deploy.local/stack.pex").exists():
        pytest.fail(
            "deploy.local/stack.pex is missing: run under `./pants test` (it builds the pex files)"
        )
    if shutil.which("redis-server") is None:
        unavailable("redis-server")
    root = Path(tempfile.mkdtemp(prefix="ragcore-local-"))
    output = root / "stack.out"
    offset = _free_offset()
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(DIST / "deploy.local/stack.pex"),
                "--root",
                str(root / "state"),
                "--dist",
                str(DIST),
                "--port-offset",
                str(offset),
                "--documents",
                str(DOCUMENTS),
                "--trace",  # every part writes its spans to state/traces.jsonl
            ],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningStack(root / "state", process, output, offset)
    try:
        running.wait_output(r"ragcore is running", START_TIMEOUT)
        yield running
    finally:
        if process.poll() is None:  # a test failed before the last one stopped it
            groups = {int(path.read_text()) for path in (running.root / "pids").glob("*.pid")}
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                for pid in {process.pid, *_process_groups(groups)}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _wait_task(api: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = api.get(f"/api/v1/tasks/status/{task_id}").json()
        return status if status["status"] in ("SUCCESS", "FAILURE", "REVOKED") else None

    status = wait_until(finished, timeout, f"task {task_id}", interval=0.2)
    assert isinstance(status, dict)
    return status


def _query_for_chunk(stack: RunningStack, document_id: str, chunk: int) -> str:
    """The stand-in corpus's words for one chunk (see
    ragcore_dev.standins.ingest.Document.query)."""
    doc = httpx.get(f"{stack.url('ingest')}/_control/documents/{document_id}").json()
    text = doc["texts"][chunk]  # "Topic and word: aspect. ..."
    aspect = text.split(": ", 1)[1].split(".", 1)[0]
    return f"{doc['topic'][0]} {doc['topic'][1]} {aspect}"


def test_stack_answers_readyz_completes_the_initial_sync_and_answers_a_query(
    local: RunningStack,
) -> None:
    with local.api() as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": "ok", "database": "ok"}

        task_id = local.wait_output(r"initial full sync: task (\S+)", 5).group(1)
        sync = _wait_task(api, task_id)
        assert sync["status"] == "SUCCESS", sync
        assert sync["result"]["copied"] == DOCUMENTS * 5  # the stand-in's five chunks per document
        local.wait_output(r"initial full sync SUCCESS", 10)

    with local.api(QUERY) as api:
        answer = api.post(
            "/api/v1/query/",
            json={"user_id": "e2e", "query": _query_for_chunk(local, "doc-00003", 2)},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["sources"][0]["chunk_id"] == "doc-00003/chunk-002"


def test_with_trace_one_querys_spans_from_the_api_beat_and_the_workers_share_its_trace(
    local: RunningStack,
) -> None:
    with local.api({**QUERY, "X-Request-ID": "traced-query"}) as api:
        answer = api.post(
            "/api/v1/query/",
            json={"user_id": "e2e-trace", "query": _query_for_chunk(local, "doc-00002", 1)},
        )
    assert answer.status_code == 200, answer.text

    def trace_id() -> str | None:
        for line in (local.root / "logs/api.log").read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if (
                entry.get("logger") == "ragcore.access"
                and entry.get("request_id") == "traced-query"
            ):
                return str(entry["trace_id"])
        return None

    trace = "0x" + wait_until(trace_id, 30, "the query's access line with its trace_id")
    wanted = {"ragcore-api", "ragcore-beat", "ragcore-worker-notifications", "ragcore-worker-user"}

    def services() -> set[str] | None:
        spans = [
            json.loads(line) for line in (local.root / "traces.jsonl").read_text().splitlines()
        ]
        found = {
            s["resource"]["attributes"]["service.name"]
            for s in spans
            if s["context"]["trace_id"] == trace
        }
        return found if wanted <= found else None

    wait_until(services, 60, f"spans of every part in trace {trace}")


def test_flower_lists_the_four_workers_each_with_its_own_queue(local: RunningStack) -> None:
    def queues_by_worker() -> dict[str, list[str]] | None:
        workers = httpx.get(
            f"{local.url('flower')}/api/workers", params={"refresh": "1"}, timeout=30
        ).json()
        seen = {
            name.split("@")[0]: sorted(q["name"] for q in info.get("active_queues") or [])
            for name, info in workers.items()
        }
        return seen if len(seen) == len(Queue) and all(seen.values()) else None

    seen = wait_until(queues_by_worker, 60, "Flower to see four workers", interval=1)
    assert seen == {q.value: [q.value] for q in Queue}


def _listening_addresses(port: int) -> set[str]:
    """The local addresses (as /proc/net/tcp writes them) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_flower_without_a_login_listens_on_127_0_0_1_only(local: RunningStack) -> None:
    # The local stack opens Flower's API without basic auth; only this machine may reach it.
    port = PORTS["flower"] + local.offset
    assert _listening_addresses(port) == {"0100007F"}


def test_celery_inspect_from_another_process_shows_one_queue_per_worker(
    local: RunningStack,
) -> None:
    # The `celery` command of the Flower pex, as an operator would run it against the broker.
    done = subprocess.run(
        [
            sys.executable,
            str(DIST / "deploy.images/flower.pex"),
            f"--broker={local.redis_url}",
            "inspect",
            "active_queues",
            "--json",
            "--timeout=5",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    replies = json.loads(done.stdout.strip().splitlines()[-1])
    assert {
        worker.split("@")[0]: [q["name"] for q in queues] for worker, queues in replies.items()
    } == {q.value: [q.value] for q in Queue}


def test_a_stopped_notifications_worker_delays_only_its_own_tasks_which_run_when_it_returns(
    local: RunningStack,
) -> None:
    deliveries = f"{local.url('users')}/_control/deliveries"

    def reports() -> int:
        return len(httpx.get(deliveries, params={"kind": "query-results"}).json()["deliveries"])

    def queue(api: httpx.Client, name: str) -> dict[str, Any]:
        return next(
            q for q in api.get("/api/v1/tasks/queues").json()["queues"] if q["name"] == name
        )

    with local.api() as admin, local.api(QUERY) as query_api:
        wait_until(
            lambda: queue(admin, "notifications")["depth"] == 0,
            60,
            "earlier reports to be delivered",
        )
        before = reports()
        old_pid = local.pid("worker-notifications")
        assert old_pid is not None
        os.kill(old_pid, signal.SIGTERM)
        local.wait_output(r"worker-notifications exited with 0", 60)

        for chunk in range(3):
            question = {
                "user_id": "e2e-outage",
                "query": _query_for_chunk(local, "doc-00005", chunk),
            }
            answer = query_api.post("/api/v1/query/", json=question)
            assert answer.status_code == 200, answer.text
            assert answer.json()["sources"][0]["chunk_id"] == f"doc-00005/chunk-{chunk:03d}"
        # The other three queues keep working.
        triggered = [
            admin.post("/api/v1/tasks/trigger/cleanup-cache").json()["task_id"],
            admin.post("/api/v1/tasks/trigger/reset-daily-limits").json()["task_id"],
            admin.post("/api/v1/sync/trigger-sync").json()["task_id"],
        ]
        assert [_wait_task(admin, t)["status"] for t in triggered] == ["SUCCESS"] * 3
        # The reports of the three answers wait in their queue, which says no worker consumes it.
        wait_until(
            lambda: queue(admin, "notifications")["depth"] >= 3, 30, "the reports to queue up"
        )
        waiting = queue(admin, "notifications")
        assert waiting["flagged"] and waiting["consumers"] == 0, waiting
        assert reports() == before

        assert local.pid("stack") == local.process.pid
        os.kill(local.process.pid, signal.SIGUSR1)  # the stack starts the stopped worker again
        local.wait_output(r"starting worker-notifications again", 10)
        wait_until(
            lambda: reports() >= before + 3, 90, "the waiting reports to be delivered", interval=0.5
        )
        assert local.pid("worker-notifications") not in (None, old_pid)
        assert queue(admin, "notifications")["consumers"] == 1


def test_ctrl_c_stops_every_part_and_leaves_no_process_behind(local: RunningStack) -> None:
    groups = {
        int(path.read_text())
        for path in (local.root / "pids").glob("*.pid")
        if path.stem != "stack"
    }
    # redis, qdrant, ingest, users; workers; api, beat, flower
    assert len(groups) == 4 + len(Queue) + 3
    assert _process_groups(groups)

    local.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert local.process.wait(90) == 0, local.output()[-4000:]
    assert local.output().rstrip().endswith("stopped")
    assert _process_groups(groups) == []
    assert list((local.root / "pids").glob("*.pid")) == []
