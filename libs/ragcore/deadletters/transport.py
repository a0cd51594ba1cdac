"""Kombu's Redis transport, made to set poison aside instead of dying on it.

Kombu's Redis channel decodes each message it pops (`BRPOP`/`RPOP`) inline, with no hook: a list
element that is not a JSON message envelope raises out of the worker's event loop, and Celery stops
the worker ("Unrecoverable error: JSONDecodeError", exit status 0), the element already gone from
Redis. Celery's own hooks (`on_decode_error`, `on_unknown_task`, ...) only see messages that got
past that point (see ragcore.deadletters.consumer). These channels decode the same way and hand
what does not decode to `poison_received` instead, then go on with the next message.

They also survive the close of a connection that Celery collected first (see `_connparams`), which
otherwise stopped the worker as well, and keep one client per pool (see `_create_client`).
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import redis
from celery.utils.dispatch import Signal
from kombu.transport import redis as kombu_redis  # pants: no-infer-dep (with celery)
from kombu.utils.encoding import bytes_to_str  # pants: no-infer-dep (with celery)
from kombu.utils.json import loads  # pants: no-infer-dep (with celery)

log = logging.getLogger(__name__)

#: Sent with `queue` (str), `body` (the raw bytes popped) and `detail` (why it does not decode).
poison_received = Signal(name="poison_received", providing_args={"queue", "body", "detail"})


class Channel(kombu_redis.Channel):
    if TYPE_CHECKING:  # what is used below of kombu's channel, which does not annotate it
        Message: Any
        _in_poll: Any

        def _q_for_pri(self, queue: str, pri: int) -> str:
            raise NotImplementedError

        def _maybe_update_queues_expire(self, client: Any, queue: str) -> None:
            raise NotImplementedError

        def _flush_brpop_reauth(self) -> None:
            raise NotImplementedError

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            # Celery 5.7's consumer collects a broken broker connection, which detaches the
            # transport, then closes it: kombu's close hands the unacknowledged messages back
            # through a new client of that transport, and reading the detached one's URL raised
            # AttributeError, which nothing catches ("Unrecoverable error": the worker exited). A
            # connection error is what the close ignores; the messages stay in `unacked` for the
            # reconnect hand-back (ragcore.worker.reconnect) and the reconciler.
            raise redis.exceptions.ConnectionError("the broker connection was already collected")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call,no-any-return]  # kombu is untyped

    def _create_client(self, asynchronous: bool = False) -> Any:
        """The channel's one client of its pool for the commands it sends outside the event loop.

        Kombu built a new `redis.Redis` for each (every publish, ack, requeue and event), and a
        client's construction copies its ~200 response callbacks into a fresh dict: ~8 % of a
        worker's and of Beat's Python time (py-spy). A client holds no connection of its own (each
        command takes one from the pool), so one per pool serves every thread; a new pool gets a
        new one."""
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]  # kombu is untyped
        pool = self.pool
        kept = self.__dict__.get("_kept_client")
        if kept is None or kept[0] is not pool:
            kept = self._kept_client = (pool, super()._create_client())  # type: ignore[no-untyped-call]
        return kept[1]

    def _envelope(self, raw: bytes, queue: str) -> dict[str, Any] | None:
        """The message envelope in `raw`, or None once poison was handed to `poison_received`."""
        try:
            payload = loads(bytes_to_str(raw))
            # What kombu builds on delivery: a missing field or a bad body encoding raises here,
            # before the consumer's callback would (the same exceptions, uncaught, in the loop).
            self.Message(payload, channel=self)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            detail = f"not a message envelope: {type(exc).__name__}: {exc}"
            if not poison_received.receivers:
                log.error("poison on %s dropped: %s; body %r", queue, detail, raw[:1024])
            poison_received.send(sender=self, queue=queue, body=raw, detail=detail)
            return None
        return payload  # type: ignore[no-any-return]  # kombu's loads is untyped

    # Kombu 5.7's `_brpop_read`, its one `loads(...)` call replaced by `_envelope`: kombu has no
    # narrower hook (the decode and the delivery are one expression). Keep in step on upgrades.
    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._envelope(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    # Kombu 5.7's `_get` (basic_get, the polling drain), decoding through `_envelope`; poison is
    # skipped and the next element tried.
    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while item := client.rpop(self._q_for_pri(queue, pri)):
                    payload = self._envelope(item, queue)
                    if payload is not None:
                        self._maybe_update_queues_expire(client, queue)
                        return payload
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


_BY_SCHEME = {"redis": Transport, "sentinel": SentinelTransport}


def transport_for(broker_url: str) -> str | None:
    """Celery's `broker_transport` for `broker_url`: ours for `redis://` and `sentinel://`.

    None (kombu's choice from the URL) for any other scheme: `rediss://` among them, because kombu
    ties its TLS defaults to that scheme's name, which a transport path would lose.
    """
    transport = _BY_SCHEME.get(urlparse(broker_url.split(";", 1)[0]).scheme)
    return f"{transport.__module__}:{transport.__qualname__}" if transport else None
