"""Private Redis servers and throw-away PostgreSQL databases, one set per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ragcore_dev.processes import free_port, wait_until

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def services_required() -> bool:
    """Under CI a missing service fails the test: Pants reports a skipped file as succeeded."""
    return os.environ.get("RAGCORE_TEST_REQUIRE_SERVICES") == "1"


def unavailable(what: str) -> NoReturn:
    if services_required():
        pytest.fail(f"{what} is required (RAGCORE_TEST_REQUIRE_SERVICES=1) but unavailable")
    pytest.skip(f"{what} unavailable")


class RedisServer:
    """A private redis-server on a free port: tests may stop and restart it (a broker outage)."""

    def __init__(self, *args: str, config: str = "") -> None:
        """`args`: more redis-server options (`--replicaof`, `--sentinel`); `config`: a
        configuration file's text, written to its directory (a sentinel rewrites its file)."""
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ragcore-redis-")
        self.args = args
        self.config = os.path.join(self.dir, "redis.conf")
        with open(self.config, "w") as file:
            file.write(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server")
        self.process = subprocess.Popen(
            [
                binary,
                self.config,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--maxmemory-policy",
                "noeviction",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("private redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: a crashed node, whatever it had not replicated lost with it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelCluster:
    """A primary, its replica and three sentinels, each a redis-server on a free 127.0.0.1 port: a
    broker that fails over. A sentinel calls the primary down after `down_after_ms` without an
    answer; two agreeing, one promotes the replica."""

    def __init__(
        self, master: str = "ragcore", down_after_ms: int = 1000, failover_timeout_ms: int = 3000
    ) -> None:
        self.master = master
        self.primary = RedisServer()
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.primary.port))
        config = (
            f"sentinel monitor {master} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
            f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master} 1\n"
        )
        self.sentinels = [RedisServer("--sentinel", config=config) for _ in range(3)]

    @property
    def nodes(self) -> str:
        """RAGCORE_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        wait_until(self.replicating, 30, "the replica in sync and every sentinel seeing it")

    def master_port(self, sentinel: RedisServer) -> int | None:
        """The master's port as `sentinel` names it (None if it does not answer)."""
        try:
            address = redis.Redis(
                port=sentinel.port, socket_timeout=1
            ).sentinel_get_master_addr_by_name(self.master)
        except redis.RedisError:
            return None
        # redis-py types the reply loosely: (host, port), or None for an unknown master
        return int(address[1]) if isinstance(address, tuple | list) else None

    def replicating(self) -> bool:
        try:
            info = redis.Redis(port=self.primary.port, socket_timeout=1).info("replication")
            replicas = [
                redis.Redis(port=s.port, socket_timeout=1).sentinel_slaves(self.master)
                for s in self.sentinels
            ]
        except redis.RedisError:
            return False
        online = info.get("slave0", {}).get("state") == "online"
        return online and all(
            any(r["port"] == self.replica.port and not r["is_sdown"] for r in seen)
            for seen in replicas
        )

    def promoted(self) -> bool:
        """Every sentinel names the replica master, and it answers as one."""
        if any(self.master_port(s) != self.replica.port for s in self.sentinels):
            return False
        try:
            role = redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
        except redis.RedisError:
            return False
        return role.get("role") == "master"

    def close(self) -> None:
        for server in (*self.sentinels, self.replica, self.primary):
            server.close()


@contextmanager
def sentinel_cluster(
    down_after_ms: int = 1000, failover_timeout_ms: int = 3000
) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def postgres_database(server: str | None = None) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server at `server` (a URL naming any database
    there; by default the test server), dropped afterwards."""
    base = make_url(server or os.environ.get("RAGCORE_TEST_DATABASE_URL") or DEFAULT_DATABASE_URL)
    base = base.set(drivername="postgresql+psycopg")
    name = f"ragcore_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        unavailable(f"PostgreSQL at {base.render_as_string()} ({type(exc).__name__})")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
