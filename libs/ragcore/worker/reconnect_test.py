"""What a worker hands back once its consumer reconnects waits in its queue again, marked so."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis
from celery import Celery, signals

from ragcore.broker import held
from ragcore.worker import reconnect
from ragcore_dev.servers import redis_server


@pytest.fixture()
def broker() -> Iterator[tuple[Celery, redis.Redis]]:
    with redis_server() as server:
        app = Celery("reconnect-test", broker=server.url)
        yield app, redis.Redis.from_url(server.url)
        app.close()


def test_a_request_dropped_on_a_broken_connection_is_handed_back_and_waits_again(
    broker: tuple[Celery, redis.Redis],
) -> None:
    app, client = broker
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
