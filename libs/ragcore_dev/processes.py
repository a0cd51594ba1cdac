"""Deployables as separate processes, started from the same entrypoints their images run."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def deployable_env(**settings: str) -> dict[str, str]:
    """The environment of a deployable: ours, the test's import path, and `RAGCORE_*` settings."""
    env = dict(os.environ)
    # Under Pants the sources live in the sandbox on sys.path, not in an installed package.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update({f"RAGCORE_{k.upper()}": v for k, v in settings.items()})
    return env


def die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies (a timeout kills pytest), so does it.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Deployable:
    """One deployable (`python -m <module>`), its own process group, its log in a file."""

    def __init__(self, module: str, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.module = module
        self.env = env
        self.args = args
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Deployable:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM to the main process, which stops its children), then SIGKILL of the group."""
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
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
            self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
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
