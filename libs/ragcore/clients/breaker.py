"""A circuit breaker per neighbour whose state every process shares, so an outage stops the flood.

pybreaker keeps the state, the failure count and the opening time in Redis (`CircuitRedisStorage`),
so every worker process sees one breaker per neighbour. pybreaker alone lets every process that
finds the reset timeout elapsed (or the state half-open) call through; a Redis lock (`SET NX`) on
top makes it one probe at a time across processes. The lock's value names the probe's holder: the
re-driver takes it for the delivery it publishes as the probe, and that delivery's task uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar

import pybreaker
import redis

from ragcore.clients.transport import RetryLater, is_retryable
from ragcore.redis_clients import redis_client
from ragcore.settings import NeighbourSettings, Settings

T = TypeVar("T")

PREFIX = "ragcore:breaker:"
CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN

# Delete the key only if it still holds our token (atomic compare-and-delete).
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class BreakerOpen(RetryLater):
    """The neighbour's breaker is open and this call is not its probe: nothing was sent."""

    def __init__(self, neighbour: str) -> None:
        super().__init__(
            f"the circuit breaker of {neighbour} is open (it failed repeatedly); "
            "waiting for a probe to succeed"
        )
        self.neighbour = neighbour


class Breaker:
    """One neighbour's breaker over the shared Redis state."""

    def __init__(self, neighbour: str, client: redis.Redis, neighbours: NeighbourSettings) -> None:
        self.neighbour = neighbour
        self._redis = client
        self._probe_key = f"{PREFIX}{neighbour}:probe"
        # A probe that never reports (its worker died) frees the lock after this long.
        self._probe_ttl = max(
            1, int(neighbours.breaker_probe_seconds + neighbours.http_timeout_seconds)
        )
        storage = pybreaker.CircuitRedisStorage(CLOSED, client, namespace=f"{PREFIX}{neighbour}")
        # What a call reads first, in one round trip: closed with no failure since the last success
        # is the common case, and then the call needs nothing else from Redis.
        self._quick_keys = (storage._namespace("state"), storage._namespace("fail_counter"))
        self._cb = pybreaker.CircuitBreaker(
            fail_max=neighbours.breaker_fail_max,
            reset_timeout=neighbours.breaker_probe_seconds,
            # An answer the neighbour chose (a 4xx) shows it is up: only retryable failures count.
            exclude=[lambda exc: not is_retryable(exc)],
            state_storage=storage,
            name=neighbour,
            # the caller records the neighbour's own error, not "tripped"
            throw_new_error_on_trip=False,
        )

    def ping(self) -> None:
        """Raise redis.RedisError if the shared state is out of reach."""
        self._redis.ping()

    @property
    def state(self) -> str:
        return self._cb.current_state

    def probe_due(self, now: datetime | None = None) -> bool:
        """Open for longer than the probe interval (or half-open), and no probe under way."""
        state = self.state
        if state == CLOSED or self._redis.exists(self._probe_key):
            return False
        if state == HALF_OPEN:
            return True
        opened_at = self._cb._state_storage.opened_at
        return opened_at is None or (now or datetime.now(UTC)) >= opened_at + timedelta(
            seconds=self._cb.reset_timeout
        )

    def claim_probe(self, token: str) -> bool:
        """Take the probe lock for `token` (or find it already ours)."""
        if self._redis.set(self._probe_key, token, nx=True, ex=self._probe_ttl):
            return True
        held = self._redis.get(self._probe_key)
        return held is not None and (held.decode() if isinstance(held, bytes) else held) == token

    def call(self, send: Callable[[], T], token: str | None = None) -> tuple[T, bool]:
        """Run `send` through the breaker; returns its result and whether this call closed the
        breaker.

        While open, only the holder of the probe lock calls (`token`: a re-drive's probe claim),
        once the probe interval has passed; every other call raises `BreakerOpen` at once.

        Closed with no failure counted (one MGET says so), a call that succeeds costs no other
        round trip: pybreaker would read the state again and reset the counter that is 0 already.
        A call that fails goes through pybreaker (counted, opening the breaker at `fail_max`).
        """
        if self._closed_without_failures():
            try:
                return send(), False
            except BaseException as exc:  # pybreaker's bookkeeping of the failure, then raised
                failure = exc
            try:
                self._cb.call(_raise, failure)
            except pybreaker.CircuitBreakerError:
                raise BreakerOpen(self.neighbour) from None
            raise AssertionError("unreachable")  # _raise raised
        if self.state == CLOSED:
            try:
                return self._cb.call(send), False
            except pybreaker.CircuitBreakerError:
                # Another process opened it since `state` was read: this call is held back too.
                raise BreakerOpen(self.neighbour) from None
        token = token or uuid.uuid4().hex
        if not (
            self._redis.get(self._probe_key) == token.encode()
            or (self.probe_due() and self.claim_probe(token))
        ):
            raise BreakerOpen(self.neighbour)
        try:
            result = self._cb.call(send)
        except pybreaker.CircuitBreakerError:
            raise BreakerOpen(self.neighbour) from None
        finally:
            self._redis.eval(_RELEASE, 1, self._probe_key, token)
        return result, self.state == CLOSED

    def _closed_without_failures(self) -> bool:
        try:
            state, failures = self._redis.mget(self._quick_keys)
        except redis.RedisError:  # pybreaker's storage decides, as it always did
            return False
        return state == CLOSED.encode() and failures in (b"0", b"")


def _raise(exc: BaseException) -> NoReturn:
    raise exc


_breakers: dict[tuple[str, str], Breaker] = {}


def breaker(neighbour: str, settings: Settings) -> Breaker:
    """This process's breaker of `neighbour` (its state lives in the broker's Redis)."""
    key = (neighbour, settings.redis.broker)
    if key not in _breakers:
        # A short read budget: the breaker is asked before every call to the neighbour.
        client = redis_client(settings.redis, settings.redis.broker, read_timeout=5)
        _breakers[key] = Breaker(neighbour, client, settings.neighbours)
    return _breakers[key]
