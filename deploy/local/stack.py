"""The whole system on one machine, every part its own process, from the entrypoints images run.

Started by `deploy/local/up`, which packages the pex files first. Redis is the system's
`redis-server` on a private port (or RAGCORE_REDIS_URL), the database SQLite (or
RAGCORE_DATABASE_URL), Qdrant the embedded stand-in (or RAGCORE_QDRANT_URL); the Ingest and Users
stand-ins serve a small demo corpus. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ragcore.contracts import Queue

PORTS = {"redis": 6390, "qdrant": 6333, "ingest": 7101, "users": 7102, "api": 7001, "flower": 5555}
ADMIN_KEY = "dev-admin-key"


@dataclass
class Part:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


@dataclass
class LocalStack:
    root: Path
    dist: Path
    python: str
    env: dict[str, str] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> Part:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        part = Part(name, argv, process, log)
        self.parts.append(part)
        return part

    def pex(self, relative: str) -> list[str]:
        path = self.dist / relative
        if not path.exists():
            sys.exit(f"{path} is missing: run deploy/local/up (it packages the pex files first)")
        return [self.python, str(path)]

    def stop(self) -> None:
        for part in reversed(self.parts):
            if part.process and part.process.poll() is None:
                os.killpg(part.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for part in reversed(self.parts):
            if part.process is None:
                continue
            try:
                part.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(part.process.pid, signal.SIGKILL)
                part.process.wait()


def wait_http(url: str, part: Part, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if part.process and part.process.poll() is not None:
            raise SystemExit(f"{part.name} exited; see {part.log}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{part.name} did not answer {url} within {timeout}s; see {part.log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=".local", help="state and logs (default .local)")
    parser.add_argument("--dist", default="dist", help="where ./pants package wrote the pex files")
    parser.add_argument("--documents", type=int, default=20, help="documents in the demo corpus")
    parser.add_argument("--no-initial-sync", action="store_true")
    args = parser.parse_args()

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(root, Path(args.dist).resolve(), os.environ.get("RAGCORE_PYTHON", sys.executable))
    env = dict(os.environ)
    env.pop("PEX_ROOT", None)
    env.setdefault("RAGCORE_ENVIRONMENT", "dev")
    env.setdefault("RAGCORE_DATABASE_URL", f"sqlite:///{root}/ragcore.db")
    env.setdefault("RAGCORE_INGEST_URL", f"http://127.0.0.1:{PORTS['ingest']}")
    env.setdefault("RAGCORE_USERS_URL", f"http://127.0.0.1:{PORTS['users']}")
    stack.env = env
    standin = [sys.executable, "-m"]  # the stand-ins are in this pex, next to this module

    def shutdown(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        if "RAGCORE_REDIS_URL" not in os.environ:
            binary = shutil.which("redis-server") or sys.exit("redis-server not found: install it or set RAGCORE_REDIS_URL")
            (root / "redis").mkdir(exist_ok=True)
            stack.start("redis", [binary, "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--dir", str(root / "redis"),
                                  "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"])
            env["RAGCORE_REDIS_URL"] = f"redis://127.0.0.1:{PORTS['redis']}/0"
        if "RAGCORE_QDRANT_URL" not in os.environ:
            qdrant = stack.start("qdrant", [*standin, "tests.standins.qdrant", "--port", str(PORTS["qdrant"]), "--data", str(root / "qdrant")])
            env["RAGCORE_QDRANT_URL"] = f"http://127.0.0.1:{PORTS['qdrant']}"
            wait_http(env["RAGCORE_QDRANT_URL"], qdrant)
        ingest = stack.start("ingest", [*standin, "tests.standins.ingest", "--port", str(PORTS["ingest"]), "--documents", str(args.documents)])
        users = stack.start("users", [*standin, "tests.standins.users", "--port", str(PORTS["users"])])
        api = stack.start("api", stack.pex("api/server.pex"))
        for queue in Queue:
            stack.start(f"worker-{queue.value}", stack.pex(f"services.{queue.value}/worker.pex"))
        stack.start("beat", stack.pex("services.beat/scheduler.pex"))
        stack.start("flower", [sys.executable, "-m", "celery", f"--broker={env['RAGCORE_REDIS_URL']}", "flower",
                               f"--port={PORTS['flower']}", "--address=127.0.0.1"])
        api_url = f"http://127.0.0.1:{PORTS['api']}"
        for url, part in ((f"{env['RAGCORE_INGEST_URL']}/_control/corpus", ingest), (f"{env['RAGCORE_USERS_URL']}/_control/deliveries", users),
                          (f"{api_url}/readyz", api)):
            wait_http(url, part)
        if not args.no_initial_sync:
            task = httpx.post(f"{api_url}/api/v1/sync/trigger-full-sync", headers={"X-API-Key": ADMIN_KEY}, timeout=10).json()
            print(f"initial full sync: task {task['task_id']}")
        print(f"""
ragcore is running (logs in {root}/logs):
  API        {api_url}   (docs {api_url}/docs; keys: dev-admin-key, dev-query-key, dev-sync-key)
  Flower     http://127.0.0.1:{PORTS['flower']}
  Redis      {env['RAGCORE_REDIS_URL']}
  Database   {env['RAGCORE_DATABASE_URL']}
  Qdrant     {env['RAGCORE_QDRANT_URL']}
  Ingest     {env['RAGCORE_INGEST_URL']}  (stand-in, {args.documents} demo documents)
  Users      {env['RAGCORE_USERS_URL']}  (stand-in; deliveries at /_control/deliveries)
  workers    {', '.join(f'worker-{q.value}' for q in Queue)}, beat
Ctrl-C stops everything.""", flush=True)
        while True:
            for part in stack.parts:
                if part.process and part.process.poll() is not None:
                    print(f"{part.name} exited with {part.process.returncode}; see {part.log}", flush=True)
                    part.process = None
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
