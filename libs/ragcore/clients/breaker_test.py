"""The neighbour breaker on a real redis-server: shared by every instance, one probe at a time."""

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from ragcore.clients.breaker import CLOSED, HALF_OPEN, OPEN, PREFIX, Breaker, BreakerOpen
from ragcore.settings import NeighbourSettings
from ragcore_dev.servers import redis_server

SETTINGS = NeighbourSettings(breaker_fail_max=3, breaker_probe_seconds=1, http_timeout_seconds=1)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with redis_server() as server:
        yield redis.Redis.from_url(server.url)


def down() -> int:
    request = httpx.Request("POST", "http://users.test/x")
    raise httpx.HTTPStatusError(
        "down", request=request, response=httpx.Response(503, request=request)
    )


def refused() -> int:
    request = httpx.Request("POST", "http://users.test/x")
    raise httpx.HTTPStatusError(
        "bad", request=request, response=httpx.Response(400, request=request)
    )


def trip(breaker: Breaker) -> None:
    for _ in range(SETTINGS.breaker_fail_max):
        # the neighbour's own error, also on the call that trips it
        with pytest.raises(httpx.HTTPStatusError):
            breaker.call(down)


def test_retryable_failures_open_the_breaker_for_every_process_and_4xx_do_not(
    client: redis.Redis,
) -> None:
    # A long probe interval: on a loaded machine a short one could pass before the assertions run.
    patient = SETTINGS.model_copy(update={"breaker_probe_seconds": 600})
    one, other = Breaker("users", client, patient), Breaker("users", client, patient)
    for _ in range(5):
        with pytest.raises(httpx.HTTPStatusError):
            one.call(refused)  # an answer: Users is up
    assert other.state == CLOSED
    trip(one)
    assert other.state == OPEN  # the state lives in Redis
    called = []
    with pytest.raises(BreakerOpen):
        other.call(lambda: called.append(1))
    assert called == [] and not other.probe_due()
    assert Breaker("ingest", client, SETTINGS).state == CLOSED  # per neighbour


def test_once_the_probe_interval_passes_one_probe_goes_and_its_success_closes_the_breaker(
    client: redis.Redis,
) -> None:
    one, other = Breaker("users", client, SETTINGS), Breaker("users", client, SETTINGS)
    trip(one)
    # pybreaker stores the opening time in whole seconds
    time.sleep(SETTINGS.breaker_probe_seconds + 1.1)
    assert one.probe_due()
    assert one.claim_probe("probe-task")
    assert not other.probe_due() and not other.claim_probe("another-task")
    with pytest.raises(BreakerOpen):  # not the probe: it waits
        other.call(lambda: 201)
    assert one.call(lambda: 201, "probe-task") == (201, True)  # the probe closed it
    assert other.state == CLOSED and other.call(lambda: 201) == (201, False)


def test_a_failed_probe_opens_the_breaker_again_for_another_interval(client: redis.Redis) -> None:
    breaker = Breaker("users", client, SETTINGS)
    trip(breaker)
    time.sleep(SETTINGS.breaker_probe_seconds + 1.1)
    with pytest.raises(httpx.HTTPStatusError):
        breaker.call(down)  # the probe
    assert breaker.state == OPEN and not breaker.probe_due()
    assert breaker.state != HALF_OPEN


class _ReadClosedJustBefore(Breaker):
    """A process that read the breaker closed an instant before another one opened it."""

    @property
    def state(self) -> str:
        return CLOSED


def test_a_call_that_read_the_breaker_closed_just_before_another_process_opened_it_is_held_back(
    client: redis.Redis,
) -> None:
    patient = SETTINGS.model_copy(update={"breaker_probe_seconds": 600})
    trip(Breaker("users", client, patient))
    called: list[int] = []
    # Before: pybreaker's own CircuitBreakerError, which no retry policy knows: failed for good.
    with pytest.raises(BreakerOpen):
        _ReadClosedJustBefore("users", client, patient).call(lambda: called.append(1))
    assert called == []


def commands(client: redis.Redis) -> int:
    """Commands the server has run, besides INFO (which reads this)."""
    stats = client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def test_a_call_through_a_closed_breaker_with_no_failure_costs_one_round_trip(
    client: redis.Redis,
) -> None:
    breaker = Breaker("users", client, SETTINGS)
    failures = f"{PREFIX}users:pybreaker:fail_counter"
    before = commands(client)
    assert breaker.call(lambda: 201) == (201, False)
    assert commands(client) - before == 1
    # A failure is counted; the next success resets the count (failures in a row open it).
    with pytest.raises(httpx.HTTPStatusError):
        breaker.call(down)
    assert client.get(failures) == b"1"
    assert breaker.call(lambda: 201) == (201, False)
    assert client.get(failures) == b"0"
    with pytest.raises(httpx.HTTPStatusError):
        breaker.call(refused)  # an answer: not counted
    assert client.get(failures) == b"0"
    trip(breaker)
    assert breaker.state == OPEN
