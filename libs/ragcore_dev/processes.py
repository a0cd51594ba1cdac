"""Processes for the local stack and the tests: deployables started from the entrypoints their
images run, their environment, free ports, and waiting for them — the one copy of these helpers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import httpx

#: prctl(2), looked up before any fork: the child may only make the call.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A port free on 127.0.0.1 right now, for a server started as a separate process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deployable_env(**settings: str) -> dict[str, str]:
    """The environment of a deployable: ours, the test's import path, and `RAGCORE_*` settings."""
    env = dict(os.environ)
    # Under Pants the sources live in the sandbox on sys.path, not in an installed package.
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
    env.update({f"RAGCORE_{k.upper()}": v for k, v in settings.items()})
    return env


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when the process that started it dies (a killed pytest
    or stack leaves nothing behind)."""
    parent = os.getpid()

    def arrange() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, sig)
            if os.getppid() != parent:  # the parent died before the call
                os._exit(1)

    return arrange


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """`sig` to the process's whole group (its pool children too); an empty group is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class Deployable:
    """One deployable (`python -m <module>`), its own process group, its log in a file."""

    def __init__(self, module: str, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.module = module
        self.env = env
        self.args = args
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """How it is started: `python -m <module>` (a pex subclass runs its file instead)."""
        return [sys.executable, "-m", self.module, *self.args]

    def start(self) -> Deployable:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            signal_group(self.process, sig)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM to the main process, which stops its children), then SIGKILL of
        the group."""
        if self.process is None:
            return
        if self.running:
            self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the process and its children (a crashed machine, not a shutdown)."""
        if self.process is not None:
            signal_group(self.process, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None | Literal[False]],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """`condition()`'s first truthy value (`cond and value` hands back the value), polled every
    `interval` seconds; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_http_ok(url: str, timeout: float, deployable: Deployable) -> None:
    def ok() -> bool:
        if not deployable.running:
            raise RuntimeError(f"{deployable.module} exited:\n{deployable.logs()[-4000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout, url)


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    """Wait until `url`'s port accepts connections (a stand-in binds only once it is ready)."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening at {url} after {timeout}s") from None
            time.sleep(0.05)
