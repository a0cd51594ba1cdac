"""The poison-safe Redis transport against a real Redis: what does not decode is handed to
`poison_received` and the messages behind it are delivered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.connection import Connection  # pants: no-infer-dep (with celery)
from kombu.entity import Exchange, Queue  # pants: no-infer-dep (with celery)
from kombu.messaging import Consumer, Producer  # pants: no-infer-dep (with celery)

from ragcore.deadletters import transport
from ragcore_dev.servers import RedisServer, redis_server

POISON = [b"not json {", b'{"hello": "world"}', b"[1, 2]", json.dumps({"properties": {}}).encode()]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
def poisoned() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(queue: str, body: bytes, detail: str, **_: Any) -> None:
        seen.append({"queue": queue, "body": body, "detail": detail})

    transport.poison_received.connect(receiver, weak=False, dispatch_uid="transport_test")
    yield seen
    transport.poison_received.disconnect(receiver, dispatch_uid="transport_test")


def _connection(server: RedisServer) -> Connection:
    return Connection(server.url, transport=transport.transport_for(server.url))


def test_redis_and_sentinel_urls_get_the_poison_safe_transports_and_others_kombus() -> None:
    assert transport.transport_for("redis://h:6379/0") == "ragcore.deadletters.transport:Transport"
    assert transport.transport_for("sentinel://a:26379;sentinel://b:26379") == (
        "ragcore.deadletters.transport:SentinelTransport"
    )
    assert transport.transport_for("rediss://h:6380/0") is None


@pytest.mark.parametrize("drain", ["event_loop_brpop", "basic_get"])
def test_poison_ahead_of_a_message_is_handed_over_and_the_message_delivered(
    server: RedisServer, poisoned: list[dict[str, Any]], drain: str
) -> None:
    name = f"poison-{drain}"
    queue = Queue(name, Exchange(name), routing_key=name)
    with _connection(server) as connection:
        channel = connection.channel()
        queue(channel).declare()
        client = channel.client
        for raw in POISON:
            client.lpush(name, raw)
        Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key=name)
        received: list[Any] = []
        if drain == "basic_get":
            message = queue(channel).get(no_ack=True)
            assert message is not None
            received.append(message.decode())
        else:
            with Consumer(channel, [queue], callbacks=[lambda body, m: received.append(body)]):
                while not received:
                    connection.drain_events(timeout=10)
    assert received == [{"n": 1}]
    assert [p["body"] for p in poisoned] == POISON
    assert {p["queue"] for p in poisoned} == {name}
    assert all(p["detail"].startswith("not a message envelope: ") for p in poisoned)


def test_a_collected_connection_closes_with_messages_unacknowledged(server: RedisServer) -> None:
    # Celery 5.7's consumer, on a lost broker connection (on_connection_error_after_connected),
    # collects the connection, then closes it. With a message delivered and not acknowledged,
    # kombu's close hands it back through a transport the collect may have taken away; the
    # AttributeError there was the worker's "Unrecoverable error": it exited.
    queue = Queue("collected", Exchange("collected"), routing_key="collected")
    connection = _connection(server)
    channel = connection.default_channel
    queue(channel).declare()
    Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key="collected")
    held: list[Any] = []
    with Consumer(channel, [queue], callbacks=[lambda _body, message: held.append(message)]):
        connection.drain_events(timeout=5)
    assert len(held) == 1 and not held[0].acknowledged
    # The state a collect leaves when the broker is gone (kombu's `_do_close_transport`), seen in a
    # notifications worker image whose Redis restarted while an acknowledgement was on its way.
    connection.transport.client = None
    connection.close()  # raised AttributeError: 'NoneType' object has no attribute 'hostname'
    assert connection._closed


def test_a_channel_sends_through_one_client_per_pool(server: RedisServer) -> None:
    with _connection(server) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            first.lpush("one-client", b"x")
        assert channel.client is not first  # the event loop's own (asynchronous) client
        channel._pool = None  # a new pool (kombu makes one after a disconnect): a new client
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.rpop("one-client") == b"x"
