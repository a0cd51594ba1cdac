"""What a worker hands back once its consumer reconnects waits in its queue again, marked so."""

from __future__ import annotations

from types import SimpleNamespace

import redis
from celery import Celery, signals

from ragcore.broker import held
from ragcore.worker import reconnect


def test_a_request_dropped_on_a_broken_connection_is_handed_back_and_waits_again(
    celery_on_redis: tuple[Celery, redis.Redis],
) -> None:
    app, client = celery_on_redis
    reconnect.connect(app)
    (step,) = (s for s in app.steps["consumer"] if s.__name__ == "RequeueOnReconnect")
    app.send_task("ragcore.canary.sync", task_id="t1", queue="sync")
    with app.connection_for_write() as broken:
        channel = broken.default_channel
        channel.qos.restore_at_shutdown = False  # kombu's own hand-back failed on it
        message = channel.basic_get("sync", no_ack=False)
        assert message is not None
        # what Celery's consumer made of it, then forgot when the connection broke
        request = SimpleNamespace(id="t1", acknowledged=False, message=message)
        signals.task_received.send(sender=None, request=request)
        held.mark_received(client, "sync", ["t1"])

        # the consumer starts again on a new connection
        step(SimpleNamespace()).start(SimpleNamespace(restart_count=1, app=app))
    assert client.llen("sync") == 1 and client.hlen("unacked") == 0
    # Waiting again: a reconciler finds it held. kombu's restore_by_tag did not say so, and a
    # reconciler passing before a worker took it would have published it a second time.
    assert held.waiting(client, "sync", ["t1"]) == {"t1"}
