"""define_task: an exclusive contract's runs never overlap; a run that finds the lock held skips."""

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery, Task

from ragcore.settings import get_settings
from ragcore.tasks import arguments, contracts
from ragcore.tasks.app import define_task
from ragcore.tasks.locks import lock_client, lock_key, periodic_lock
from ragcore_dev.servers import redis_server

EXCLUSIVE = replace(contracts.CLEANUP_OLD_CACHE, name="exclusive-under-test")
PLAIN = replace(EXCLUSIVE, name="plain-under-test", exclusive=False)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    with redis_server() as server:
        monkeypatch.setenv("RAGCORE_REDIS_URL", server.url)
        get_settings.cache_clear()
        yield Celery("define-task-test", task_always_eager=True)
        get_settings.cache_clear()


def _runs(app: Celery) -> tuple[Any, Any, list[bool]]:
    seen: list[bool] = []

    def body(self: Task, args: arguments.NoArgs) -> dict[str, str]:
        # While it runs, the lock is held exactly when the contract is exclusive.
        seen.append(bool(lock_client(get_settings().redis).exists(lock_key(self.name))))
        return {"ran": self.name}

    return define_task(app, EXCLUSIVE)(body), define_task(app, PLAIN)(body), seen


def test_an_exclusive_task_runs_under_its_lock_and_frees_it(app: Celery) -> None:
    exclusive, plain, seen = _runs(app)
    assert exclusive.apply().get() == {"ran": EXCLUSIVE.name}
    assert plain.apply().get() == {"ran": PLAIN.name}
    assert seen == [True, False]
    assert not lock_client(get_settings().redis).exists(lock_key(EXCLUSIVE.name))


def test_an_exclusive_task_skips_while_another_run_holds_its_lock(app: Celery) -> None:
    exclusive, plain, seen = _runs(app)
    with (
        periodic_lock(lock_client(get_settings().redis), EXCLUSIVE.name, ttl=60) as held,
        periodic_lock(lock_client(get_settings().redis), PLAIN.name, ttl=60),
    ):
        assert held
        assert exclusive.apply().get() == contracts.SKIPPED
        # not exclusive: the lock is not its business
        assert plain.apply().get() == {"ran": PLAIN.name}
    assert seen == [True]
