"""What each API process counts itself: queries by outcome and how long they took, responses by
status class.

In the process, not the ledger: every replica is scraped on its own and Prometheus sums them (a
restart resets a counter, which `rate()` allows for). `GET /metrics` serves them beside the
families it computes per scrape.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

#: Upper bounds (seconds) of the query latency buckets: cache hits in milliseconds, a chat model's
#: answer in seconds.
QUERY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Outcome(StrEnum):
    ANSWERED = "answered"
    CACHED = "cached"
    LIMITED = "limited"  # the user's daily limit (429)
    NOT_FOUND = "not_found"  # an unknown conversation (404)
    UNAVAILABLE = "unavailable"  # a dependency of the answer (503)
    ERROR = "error"  # anything else (500)


QUERIES = Counter(
    "ragcore_queries", "Queries by outcome", labelnames=["outcome"], registry=REGISTRY
)
QUERY_SECONDS = Histogram(
    "ragcore_query_duration_seconds",
    "Time to answer a query (answered or cached)",
    labelnames=["cached"],
    buckets=QUERY_BOUNDS,
    registry=REGISTRY,
)
RESPONSES = Counter(
    "ragcore_http_responses",
    "API responses by status class (1xx..5xx)",
    labelnames=["code"],
    registry=REGISTRY,
)
# Every series exists from the start, so rate() over a quiet one is 0, not absent.
for _outcome in Outcome:
    QUERIES.labels(_outcome.value)
for _cached in ("true", "false"):
    QUERY_SECONDS.labels(_cached)
for _code in ("2xx", "4xx", "5xx"):
    RESPONSES.labels(_code)


class QueryTimer:
    """The outcome of one query, set by the route; counted (and timed, if answered) at the end."""

    def __init__(self) -> None:
        self.outcome = Outcome.ERROR


@contextmanager
def observe_query() -> Iterator[QueryTimer]:
    timer = QueryTimer()
    started = time.perf_counter()
    try:
        yield timer
    finally:
        QUERIES.labels(timer.outcome.value).inc()
        if timer.outcome in (Outcome.ANSWERED, Outcome.CACHED):
            QUERY_SECONDS.labels(str(timer.outcome is Outcome.CACHED).lower()).observe(
                time.perf_counter() - started
            )


def count_response(status: int) -> None:
    RESPONSES.labels(f"{status // 100}xx").inc()
