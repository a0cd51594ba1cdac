"""An `unacked` entry moved back to its queue waits there again, moved once however many race."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import redis
from celery import Celery

from ragcore.broker import held


def test_a_moved_back_entry_waits_in_its_queue_again_and_moves_once_when_callers_race(
    celery_on_redis: tuple[Celery, redis.Redis],
) -> None:
    app, client = celery_on_redis
    app.send_task("ragcore.canary.sync", task_id="t1", queue="sync")
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.qos.restore_at_shutdown = False  # its worker dies: nothing handed back
        message = channel.basic_get("sync", no_ack=False)
        assert message is not None
        tag = message.delivery_tag
    # received: no longer waiting (the worker's monitor takes it off the waiting set)
    held.mark_received(client, "sync", ["t1"])

    def move(_: int) -> bool:
        with app.connection_for_write() as conn:
            return held.move_back(conn.default_channel, tag, "t1")

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sorted(pool.map(move, range(4))) == [False, False, False, True]
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert client.llen("sync") == 1
    # waiting again: a reconciler asking the waiting set finds it held
    assert held.waiting(client, "sync", ["t1"]) == {"t1"}
