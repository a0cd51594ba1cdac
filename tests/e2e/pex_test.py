"""Each packaged pex starts as its image starts it; each worker pex consumes only its own queue."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ragcore.tasks import dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore_dev.processes import Deployable, free_port, wait_http_ok, wait_until
from tests.support.stack import Stack

PEXES: dict[object, Path] = {
    **{q: Path(f"services.{q.value}/worker.pex") for q in Queue},
    "beat": Path("services.beat/scheduler.pex"),
    "api": Path("api/server.pex"),
    "migrate": Path("deploy.images/migrate.pex"),
}


def _pex(key: object) -> Path:
    path = PEXES[key]
    if not path.exists():
        pytest.fail(f"{path} is missing: run under `./pants test` (it builds the pex files)")
    return path


class PexDeployable(Deployable):
    """Run as the Dockerfile's ENTRYPOINT runs it: the pex carries its code and dependencies."""

    def __init__(self, pex: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        super().__init__(pex.stem, {k: v for k, v in env.items() if k != "PYTHONPATH"}, args)
        self.pex = pex

    def command(self) -> list[str]:
        return [sys.executable, str(self.pex), *self.args]


def _pex_contents(pex: Path) -> list[str]:
    """Every file a pex carries: a packed pex is a directory of files and zips (code, each
    wheel)."""
    names = []
    for path in pex.rglob("*") if pex.is_dir() else [pex]:
        if zipfile.is_zipfile(path):
            names += [
                f"{path.relative_to(pex)}!{name}" for name in zipfile.ZipFile(path).namelist()
            ]
        elif path.is_file():
            names.append(str(path.relative_to(pex)))
    return names


@pytest.mark.parametrize("key", list(PEXES), ids=str)
def test_deployable_pex_carries_no_dev_or_test_code(key: object) -> None:
    # Our sources sit at the pex's top level; third-party wheels (with their own tests/) under
    # .deps/.
    ours = [
        name.split("!")[-1]
        for name in _pex_contents(_pex(key))
        if not name.startswith((".deps/", ".bootstrap/"))
    ]
    assert "ragcore/settings.py" in ours, "the shared libs are in the pex"
    assert [name for name in ours if name.startswith(("ragcore_dev/", "tests/"))] == []


@pytest.mark.parametrize("queue", list(Queue))
def test_worker_pex_consumes_its_queue_and_no_other(stack: Stack, queue: Queue) -> None:
    hostname = f"pex-{queue.value}@test"
    worker = PexDeployable(_pex(queue), stack.env(), (f"--hostname={hostname}",)).start()
    stack.deployables.append(worker)
    stack.wait_consuming(hostname, worker, timeout=120)

    others = [q for q in Queue if q != queue]
    foreign = [dispatch.send(stack.producer, CANARIES[q]) for q in others]
    own = dispatch.send(stack.producer, CANARIES[queue], {"echo": "pex"})
    assert stack.producer.AsyncResult(own).get(timeout=60)["queue"] == queue.value
    assert [stack.producer.AsyncResult(t).state for t in foreign] == ["PENDING"] * len(others)
    registered = stack.producer.control.inspect(destination=[hostname], timeout=5).registered()[
        hostname
    ]
    assert CANARIES[queue].name in registered
    assert not any(CANARIES[q].name in registered for q in others)
    worker.stop()
    stack.redis_client().flushdb()  # the foreign canaries would otherwise reach the next worker


def test_api_pex_serves_health(stack: Stack) -> None:
    port = free_port()
    api = PexDeployable(_pex("api"), stack.env(api_port=str(port))).start()
    stack.deployables.append(api)
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", 120, api)


def test_beat_pex_starts_and_sends_a_due_task(stack: Stack) -> None:
    beat = PexDeployable(
        _pex("beat"), stack.env(beat_schedule='{"cleanup_old_cache": "1"}')
    ).start()
    stack.deployables.append(beat)
    client = stack.redis_client()
    wait_until(lambda: client.llen(Queue.CLEANUP.value) > 0, 120, "beat to send cleanup_old_cache")
    beat.stop()


#: What each pex's usage must mention: its own options, and the options of what it hands the rest
#: to.
USAGE: dict[object, tuple[str, ...]] = {
    **{q: ("--healthcheck", "--concurrency") for q in Queue},
    "beat": ("scheduler", "--schedule"),
    "api": ("RAGCORE_API_PORT",),
    "migrate": ("upgrade", "downgrade"),
}


@pytest.mark.parametrize("key", list(PEXES), ids=str)
def test_every_pex_prints_its_usage_for_help_without_redis_or_the_database(key: object) -> None:
    # Nothing listens on port 1: a pex that opened Redis or the database would fail or hang, one
    # that served would never exit.
    env = {
        k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAGCORE_")
    }
    env.update(
        RAGCORE_REDIS_URL="redis://127.0.0.1:1/0",
        RAGCORE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    done = subprocess.run(
        [sys.executable, str(_pex(key)), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "usage" in done.stdout.lower()
    assert all(word in done.stdout for word in USAGE[key]), done.stdout
