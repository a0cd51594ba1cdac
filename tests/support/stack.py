"""A running RAG Core for tests: private Redis, a fresh database, and deployables on demand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from ragcore.broker import held
from ragcore.db import create_schema, reset_engines, session_scope
from ragcore.db.models import TaskRecord
from ragcore.settings import get_settings
from ragcore.tasks.app import create_app
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import Deployable, deployable_env, free_port, wait_http_ok, wait_until
from ragcore_dev.servers import (
    RedisServer,
    SentinelCluster,
    postgres_database,
    redis_server,
    sentinel_cluster,
)

ADMIN_KEY, QUERY_KEY, SYNC_KEY = "test-admin-key", "test-query-key", "test-sync-key"
API_KEYS = f'{{"{ADMIN_KEY}": "admin", "{QUERY_KEY}": "query", "{SYNC_KEY}": "sync"}}'


class Stack:
    def __init__(
        self,
        redis_server: RedisServer,
        database_url: str,
        settings: dict[str, str],
        sentinel: SentinelCluster | None = None,
    ) -> None:
        #: The broker's Redis: with Sentinel, the primary (until it fails over).
        self.redis = redis_server
        self.sentinel = sentinel
        self.database_url = database_url
        self.settings = settings
        self.deployables: list[Deployable] = []
        self.producer: Celery = create_app("tests", get_settings())
        self.api_url: str | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return deployable_env(**{**self.settings, **extra})

    def start_worker(
        self, queue: Queue, *args: str, name: str | None = None, **settings: str
    ) -> Deployable:
        """Start `services.<queue>.worker` and wait until it consumes its queue."""
        return self._start_worker(queue, args, name, self.env(**settings))

    def start_faulty_worker(
        self, queue: Queue, fault: Path, *args: str, name: str | None = None, **settings: str
    ) -> Deployable:
        """`start_worker`, with `fault` first on the worker's import path: a folder whose
        `sitecustomize.py` Python runs at start-up, a fault injected into that one process (a
        skewed clock, a wedged loop)."""
        env = self.env(**settings)
        env["PYTHONPATH"] = os.pathsep.join((str(fault), env["PYTHONPATH"]))
        return self._start_worker(queue, args, name, env)

    def _start_worker(
        self, queue: Queue, args: tuple[str, ...], name: str | None, env: dict[str, str]
    ) -> Deployable:
        hostname = f"{name or queue.value}@test"
        worker = Deployable(
            f"services.{queue.value}.worker", env, (f"--hostname={hostname}", *args)
        )
        self.deployables.append(worker.start())
        self.wait_consuming(hostname, worker)
        return worker

    def wait_consuming(self, hostname: str, worker: Deployable, timeout: float = 120) -> None:
        def ready() -> bool:
            if not worker.running:
                raise RuntimeError(f"worker {hostname} exited:\n{worker.logs()[-4000:]}")
            replies = self.producer.control.ping(destination=[hostname], timeout=0.5)
            return any(hostname in r for r in replies)

        wait_until(ready, timeout, f"worker {hostname}")

    def start_api(self, **settings: str) -> str:
        port = free_port()
        api = Deployable("api.main", self.env(api_port=str(port), **settings))
        self.deployables.append(api.start())
        self.api_url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{self.api_url}/healthz", 60, api)
        return self.api_url

    def start(self, module: str, *args: str, **settings: str) -> Deployable:
        deployable = Deployable(module, self.env(**settings), args)
        self.deployables.append(deployable.start())
        return deployable

    def api(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        assert self.api_url, "start_api() first"
        return httpx.Client(
            base_url=self.api_url, headers={"X-API-Key": key} if key else {}, timeout=30
        )

    def wait_acknowledged(self, task_id: str, timeout: float = 30) -> None:
        """Until the task's result is stored and its message acknowledged (delivered, so it was in
        the transport's `unacked` hash; out of it now)."""

        def acknowledged() -> bool:
            ready = self.producer.AsyncResult(task_id).ready()
            return ready and task_id not in held.unacked(self.redis_client())

        wait_until(acknowledged, timeout, f"task {task_id} acknowledged", interval=0.005)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def close(self) -> None:
        for deployable in reversed(self.deployables):
            deployable.stop()
        self.producer.close()


@contextmanager
def running_stack(*, sentinel: bool = False, **extra: str) -> Iterator[Stack]:
    """Private Redis + fresh PostgreSQL database; the test process reads the same settings.

    `sentinel`: the Redis is a primary with a replica and three sentinels, and every deployable
    finds it through them (RAGCORE_REDIS_SENTINELS).
    """
    with ExitStack() as stack:
        cluster = stack.enter_context(sentinel_cluster()) if sentinel else None
        server = cluster.primary if cluster else stack.enter_context(redis_server())
        if cluster:
            extra = {
                "redis_sentinels": cluster.nodes,
                "redis_sentinel_master": cluster.master,
                **extra,
            }
        database_url = stack.enter_context(postgres_database())
        settings = {
            "environment": "test",
            "redis_url": server.url,
            "database_url": database_url,
            "api_keys": API_KEYS,
            "log_level": "INFO",
            # Deployables without a Qdrant URL open a local folder: never the developer's own.
            "qdrant_path": tempfile.mkdtemp(prefix="ragcore-qdrant-"),
            **extra,
        }
        saved = {k: os.environ.get(k) for k in (f"RAGCORE_{k.upper()}" for k in settings)}
        os.environ.update({f"RAGCORE_{k.upper()}": v for k, v in settings.items()})
        _reset_cached_settings()
        create_schema()
        running = Stack(server, database_url, settings, cluster)
        try:
            yield running
        finally:
            running.close()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _reset_cached_settings()


#: Another client: a plain Celery app on the broker, in a process that never imports ragcore (whose
#: publish hooks would otherwise stamp its messages).
_BARE_SEND = (
    "import json, sys\n"
    "from celery import Celery\n"
    "options = json.loads(sys.argv[1])\n"
    "print(Celery(broker=options.pop('broker')).send_task(**options).id)\n"
)


def send_from_another_client(
    stack: Stack, name: str, queue: str, task_id: str, **kwargs: Any
) -> None:
    """`send_task` from a bare Celery app (as Flower or a script sends): no ledger row, no stamp."""
    options = {"broker": stack.redis.url, "name": name, "queue": queue, "task_id": task_id}
    done = subprocess.run(
        [sys.executable, "-c", _BARE_SEND, json.dumps({**options, "kwargs": kwargs})],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == task_id


def ledger_record(task_id: str, *states: str, timeout: float = 10) -> TaskRecord:
    """The task's ledger row once it reaches one of `states` (workers write the ledger in
    batches)."""

    def reached() -> TaskRecord | None:
        with session_scope() as session:
            record = session.get(TaskRecord, task_id)
        return record if record is not None and record.state in states else None

    return wait_until(reached, timeout, f"task {task_id} in the ledger as {'/'.join(states)}")


def _reset_cached_settings() -> None:
    get_settings.cache_clear()
    reset_engines()
