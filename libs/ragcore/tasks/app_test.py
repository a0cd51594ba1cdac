"""define_task: an exclusive contract's runs never overlap; a run that finds the lock held skips;
publish_only: a publish costs one round trip."""

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from celery import Celery, Task
from celery._state import _set_task_join_will_block

from ragcore.settings import get_settings
from ragcore.tasks import arguments, contracts
from ragcore.tasks.app import define_task, publish_only
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


def test_a_publish_only_process_sends_a_task_in_one_round_trip() -> None:
    with redis_server() as server:
        app = Celery("publish-only-test", broker=server.url, backend=server.url)
        client = redis.Redis.from_url(server.url)

        def commands() -> dict[str, int]:
            client.config_resetstat()
            with app.producer_or_acquire() as producer:
                for _ in range(5):
                    app.send_task("t", queue="q", producer=producer)
            stats = client.info("commandstats")
            return {k: v["calls"] for k, v in stats.items() if "resetstat" not in k}

        app.send_task("t", queue="q")  # connected
        assert commands()["cmdstat_subscribe"] == 5  # Celery's default: a result channel each
        try:
            publish_only()
            assert commands() == {"cmdstat_lpush": 5}
        finally:
            _set_task_join_will_block(False)
        app.close()
