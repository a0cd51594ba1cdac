"""The cleanup worker, started from its entrypoint, on seeded Redis and PostgreSQL data: each task
removes or archives exactly what it should, and nothing of the broker, other results or other keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, select

from ragcore.db import session_scope, utcnow
from ragcore.db.models import (
    Conversation,
    FailedDelivery,
    Message,
    QueryCacheEntry,
    SyncEvent,
    TaskRecord,
)
from ragcore.query.cache import HotCache, bump_data_version
from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch, ledger
from ragcore.tasks.contracts import CANARIES, Queue, TaskContract
from ragcore.tasks.locks import lock_client, periodic_lock
from tests.support.stack import ADMIN_KEY, Stack, ledger_record


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[None]:
    stack.start_worker(Queue.CLEANUP)
    yield


def _run(stack: Stack, task: TaskContract, kwargs: dict[str, Any] | None = None) -> Any:
    task_id = dispatch.send(stack.producer, task, kwargs)
    return stack.producer.AsyncResult(task_id).get(timeout=60)


def _keys(stack: Stack) -> set[str]:
    return {k.decode() for k in stack.redis_client().scan_iter(count=1000)}


def test_cleanup_old_cache_removes_entries_of_older_data_versions_and_no_other_key(
    stack: Stack, worker: None
) -> None:
    settings = get_settings()
    r = stack.redis_client()
    cache = HotCache(r, settings.redis.cache_prefix, 3600)
    with session_scope() as session:
        for _ in range(3):
            bump_data_version(session)  # the data version is now 3
    for version, count in ((1, 700), (2, 40), (3, 25)):  # 740 stale keys: several SCAN batches
        with r.pipeline() as pipe:
            for n in range(count):
                pipe.set(f"{settings.redis.cache_prefix}v{version}:{n:064x}", b"{}", ex=3600)
            pipe.execute()
    lookalikes = [
        f"{settings.redis.cache_prefix}stats",  # under our prefix but not a versioned entry
        settings.redis.cache_prefix.rstrip(":") + "-archive:v1:abc",
        f"other:{settings.redis.cache_prefix}v1:abc",
    ]
    for key in lookalikes:
        r.set(key, "keep")
    succeeded = dispatch.send(stack.producer, CANARIES[Queue.CLEANUP])
    stack.producer.AsyncResult(succeeded).get(timeout=30)
    pending = dispatch.send(stack.producer, CANARIES[Queue.USER])  # no user worker: stays queued
    # The transport's own bookkeeping of in-flight messages comes and goes with them, and so does a
    # queue's waiting set (its last id leaves at the worker's next tick after it received it).
    not_ours_before = {
        k
        for k in _keys(stack)
        if cache.version_of(k) is None and not k.startswith(("unacked", "ragcore:published:"))
    }

    result = _run(stack, contracts.CLEANUP_OLD_CACHE)

    assert result == {"scanned": 765, "removed": 740, "data_version": 3}
    after = _keys(stack)
    assert {cache.version_of(k) for k in after} - {None} == {3}
    assert sum(1 for k in after if cache.version_of(k) == 3) == 25
    # Every key that is not a versioned cache entry is still there: lookalikes, broker, results.
    assert not_ours_before <= after
    assert (
        set(lookalikes) | {"_kombu.binding.cleanup", "user", f"celery-task-meta-{succeeded}"}
        <= after
    )
    assert r.llen(Queue.USER.value) == 1 and stack.producer.AsyncResult(pending).state == "PENDING"
    # current entries keep their TTL
    assert 0 < r.ttl(f"{settings.redis.cache_prefix}v3:{0:064x}") <= 3600


def test_cleanup_query_cache_deletes_only_rows_older_than_days(stack: Stack, worker: None) -> None:
    now = utcnow()
    ages = {"old": (2500, 31), "edge-new": (5, 29.9), "fresh": (20, 0.5)}
    with session_scope() as session:
        session.execute(
            insert(QueryCacheEntry),
            [
                {
                    "cache_key": f"{label}-{n}",
                    "data_version": 1,
                    "query": "q",
                    "response": {"a": n},
                    "created_at": now - timedelta(days=days),
                }
                for label, (count, days) in ages.items()
                for n in range(count)
            ],
        )

    assert _run(stack, contracts.CLEANUP_QUERY_CACHE, {"days": 30}) == {"deleted": 2500}

    with session_scope() as session:
        kept = set(session.scalars(select(QueryCacheEntry.cache_key)))
    assert kept == {
        f"{label}-{n}" for label in ("edge-new", "fresh") for n in range(ages[label][0])
    }
    # 29.9 days > 1 day
    assert _run(stack, contracts.CLEANUP_QUERY_CACHE, {"days": 1}) == {"deleted": 5}
    # default 30 days: nothing left
    assert _run(stack, contracts.CLEANUP_QUERY_CACHE) == {"deleted": 0}


def test_cleanup_old_conversations_archives_idle_ones_with_their_messages_and_deletes_nothing(
    stack: Stack, worker: None
) -> None:
    now = utcnow()

    def conversation(cid: str, idle_days: float, message_days: list[float]) -> None:
        with session_scope() as session:
            at = now - timedelta(days=idle_days)
            session.add(Conversation(id=cid, user_id="u1", created_at=at, updated_at=at))
            session.flush()
            for n, days in enumerate(message_days):
                session.add(
                    Message(
                        id=f"{cid}-{n}",
                        conversation_id=cid,
                        user_id="u1",
                        query="q",
                        answer="a",
                        sources=[],
                        tokens_used=3,
                        processing_time_ms=1.0,
                        created_at=now - timedelta(days=days),
                    )
                )

    for n in range(30):
        conversation(f"idle-{n}", 120, [130, 121])
    conversation("active", 1, [1])
    conversation("old-but-recent-message", 100, [100, 2])

    result = _run(stack, contracts.CLEANUP_OLD_CONVERSATIONS, {"days": 90})

    assert result == {"archived_conversations": 30, "archived_messages": 60}
    with session_scope() as session:
        conversations = dict(
            session.execute(select(Conversation.id, Conversation.archived_at)).all()
        )
        messages = dict(session.execute(select(Message.id, Message.archived_at)).all())
    assert len(conversations) == 32 and len(messages) == 63  # nothing deleted
    assert {cid for cid, at in conversations.items() if at is not None} == {
        f"idle-{n}" for n in range(30)
    }
    assert {mid for mid, at in messages.items() if at is not None} == {
        f"idle-{n}-{m}" for n in range(30) for m in range(2)
    }
    assert _run(stack, contracts.CLEANUP_OLD_CONVERSATIONS) == {
        "archived_conversations": 0,
        "archived_messages": 0,
    }


def test_cleanup_failed_tasks_removes_failed_results_only_and_the_ledger_keeps_the_failure(
    stack: Stack, worker: None
) -> None:
    backend = stack.producer.backend
    # A task that really failed in the worker (arguments its contract refuses), recorded in the
    # ledger.
    failed_for_real = str(uuid.uuid4())
    with session_scope() as session:
        ledger.record_sent(session, failed_for_real, contracts.CLEANUP_QUERY_CACHE, {"days": 0})
    stack.producer.send_task(
        contracts.CLEANUP_QUERY_CACHE.name,
        kwargs={"days": 0},
        queue="cleanup",
        task_id=failed_for_real,
    )
    with pytest.raises(Exception, match="invalid arguments"):
        stack.producer.AsyncResult(failed_for_real).get(timeout=30)
    seeded_failures = [str(uuid.uuid4()) for _ in range(30)]
    for task_id in seeded_failures:
        backend.store_result(task_id, ValueError("boom"), "FAILURE")
    kept = {state: str(uuid.uuid4()) for state in ("SUCCESS", "STARTED", "RETRY", "REVOKED")}
    for state, task_id in kept.items():
        backend.store_result(task_id, {"ok": True} if state == "SUCCESS" else None, state)
    succeeded = dispatch.send(stack.producer, CANARIES[Queue.CLEANUP])
    stack.producer.AsyncResult(succeeded).get(timeout=30)
    pending = dispatch.send(stack.producer, CANARIES[Queue.USER])  # never runs: no user worker
    r = stack.redis_client()
    queued = r.llen(Queue.USER.value)

    result = _run(stack, contracts.CLEANUP_FAILED_TASKS)

    assert result["removed"] == 31
    after = _keys(stack)
    assert not {f"celery-task-meta-{t}" for t in [failed_for_real, *seeded_failures]} & after
    for state, task_id in kept.items():
        assert stack.producer.AsyncResult(task_id).state == state
    assert stack.producer.AsyncResult(succeeded).result["queue"] == "cleanup"
    assert (
        stack.producer.AsyncResult(pending).state == "PENDING"
        and r.llen(Queue.USER.value) == queued
    )
    assert "invalid arguments" in (ledger_record(failed_for_real, "FAILURE").error or "")


@pytest.mark.parametrize(
    "task", [contracts.CLEANUP_OLD_CACHE, contracts.CLEANUP_QUERY_CACHE], ids=lambda t: t.name
)
def test_a_periodic_cleanup_skips_while_another_run_holds_its_lock(
    stack: Stack, worker: None, task: TaskContract
) -> None:
    with periodic_lock(lock_client(get_settings().redis), task.name, ttl=60) as held:
        assert held
        assert _run(stack, task) == {"skipped": "already running"}
    assert "skipped" not in _run(stack, task)  # the lock is free again once its holder ends


def test_apply_retention_deletes_what_is_past_its_age_keeps_unfinished_and_shows_in_metrics(
    stack: Stack, worker: None
) -> None:
    now = utcnow()
    days = timedelta(days=1)
    # Default retention: ledger 30 days, deliveries 90, sync events 7, query cache 30; batches of
    # 1000 (2,700 old ledger rows: three batches).
    ledger_rows: list[dict[str, Any]] = [
        *(
            {"task_id": f"old-{state}-{n}", "state": state, "finished_at": now - 31 * days}
            for state in ("SUCCESS", "FAILURE", "REVOKED")
            for n in range(900)
        ),
        *(
            {"task_id": f"recent-{n}", "state": "SUCCESS", "finished_at": now - 29 * days}
            for n in range(50)
        ),
        *(
            {"task_id": f"unfinished-{state}", "state": state, "finished_at": None}
            for state in ("PENDING", "STARTED", "RETRY")
        ),
    ]
    with session_scope() as session:
        session.execute(
            insert(TaskRecord),
            [
                {"name": "t", "queue": "cleanup", "kwargs": {}, "sent_at": now - 400 * days, **row}
                for row in ledger_rows
            ],
        )
        session.execute(
            insert(FailedDelivery),
            [
                {
                    "task_name": "t",
                    "task_id": f"delivery-{status}",
                    "payload": {},
                    "error": "e",
                    "attempts": 4,
                    "status": status,
                    "created_at": now - 100 * days,
                }
                for status in ("redriven", "discarded", "failed", "pending_redrive")
            ],
        )
        session.execute(
            insert(SyncEvent),
            [
                {
                    "document_id": f"doc-{status}",
                    "action": "upsert",
                    "status": status,
                    "occurred_at": now - 8 * days,
                    "received_at": now - 8 * days,
                }
                for status in ("done", "pending", "claimed", "failed")
            ],
        )
        session.add(
            QueryCacheEntry(
                cache_key="retention-old",
                data_version=1,
                query="q",
                response={},
                created_at=now - 31 * days,
            )
        )

    result = _run(stack, contracts.APPLY_RETENTION)

    assert result == {
        "deleted": {"task_ledger": 2700, "failed_deliveries": 2, "sync_events": 1, "query_cache": 1}
    }
    with session_scope() as session:
        seeded = [row["task_id"] for row in ledger_rows]
        mine = select(TaskRecord.task_id).where(TaskRecord.task_id.in_(seeded))
        kept = set(session.scalars(mine))
        deliveries = set(session.scalars(select(FailedDelivery.status)))
        events = set(session.scalars(select(SyncEvent.status)))
    assert kept == {f"recent-{n}" for n in range(50)} | {
        f"unfinished-{s}" for s in ("PENDING", "STARTED", "RETRY")
    }
    assert deliveries == {"failed", "pending_redrive"}
    assert events == {"pending", "claimed", "failed"}

    stack.start_api()
    with stack.api(ADMIN_KEY) as api:
        text = api.get("/metrics").text
    samples = {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("ragcore_retention_deleted_rows", ("task_ledger",))] == 2700
    assert samples[("ragcore_retention_deleted_rows", ("sync_events",))] == 1
    assert samples[("ragcore_retention_last_run_timestamp_seconds", ())] >= now.timestamp()
