"""Redis purges on a real redis-server: only our stale cache keys and only FAILURE results go."""

from collections.abc import Iterator

import orjson
import pytest
import redis

from ragcore.query.cache import HotCache
from ragcore_dev.servers import redis_server
from services.cleanup.redis_purge import glob_escape, purge_failed_results, purge_stale_cache


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


@pytest.fixture(autouse=True)
def _empty(client: redis.Redis) -> None:
    client.flushdb()


def test_glob_escape_makes_pattern_characters_literal() -> None:
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


def test_stale_versions_go_across_scan_batches_and_everything_else_stays(
    client: redis.Redis,
) -> None:
    # glob characters in the prefix are taken literally
    cache = HotCache(client, "rc[1]:cache:", 3600)
    for version in (1, 2, 3, 4):
        for n in range(7):
            cache.put(f"v{version}:{n:064x}", {"answer": version})
    others = [
        "rc1:cache:v1:x",
        "rc[1]:cache:stats",
        "rc[1]:cache:vx:1",
        "x:rc[1]:cache:v1:y",
        "celery-task-meta-1",
        "sync",
    ]
    for key in others:
        client.set(key, "keep")

    result = purge_stale_cache(cache, current_version=3, batch_size=4)

    # 28 versioned + "vx:1" scanned
    assert result == {
        "scanned": 29,
        "removed": 14,
        "data_version": 3,
    }
    remaining = {k.decode() for k in client.scan_iter(count=100)}
    assert {cache.version_of(k) for k in remaining if cache.version_of(k) is not None} == {3, 4}
    assert set(others) <= remaining
    assert len(remaining) == 14 + len(others)


def test_only_results_whose_status_is_failure_are_removed(client: redis.Redis) -> None:
    def result(task_id: str, status: str) -> None:
        client.set(
            f"celery-task-meta-{task_id}",
            orjson.dumps({"status": status, "result": None, "task_id": task_id}),
        )

    for n in range(9):
        result(f"failed-{n}", "FAILURE")
    for status in ("SUCCESS", "STARTED", "RETRY", "REVOKED", "PENDING"):
        result(status.lower(), status)
    client.set("celery-task-meta-not-json", b"\x80garbage")
    client.rpush("celery-task-meta-a-list", "FAILURE")
    client.set("other-key", orjson.dumps({"status": "FAILURE"}))

    assert purge_failed_results(client, batch_size=4) == {"scanned": 16, "removed": 9}

    remaining = {k.decode() for k in client.scan_iter(count=100)}
    assert not any(k.startswith("celery-task-meta-failed-") for k in remaining)
    assert {
        f"celery-task-meta-{s}" for s in ("success", "started", "retry", "revoked", "pending")
    } <= remaining
    assert {"celery-task-meta-not-json", "celery-task-meta-a-list", "other-key"} <= remaining
