"""The httpx client every neighbour client shares, and which of its errors are worth retrying."""

from __future__ import annotations

import os

import httpx

from ragcore.settings import NeighbourSettings

# One worker process talks to a handful of neighbours; a small pool is plenty and caps fan-out.
POOL_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0)

_process_client: tuple[int, httpx.Client] | None = None


class RetryLater(Exception):
    """A failure that a later attempt may not see, though no request was made (an open breaker)."""


#: A request timeout and "too many requests" say "later", not "never".
RETRYABLE_4XX = frozenset({408, 429})


def make_http_client(neighbours: NeighbourSettings) -> httpx.Client:
    """Build a pooled HTTP/1.1 client with the configured timeout."""
    return httpx.Client(
        timeout=httpx.Timeout(neighbours.http_timeout_seconds),
        limits=POOL_LIMITS,
        http1=True,
        http2=False,
    )


def shared_http_client(neighbours: NeighbourSettings) -> httpx.Client:
    """Return this process's client, building it on first use.

    Keyed by pid: a Celery prefork child must not reuse the sockets of the parent it was forked
    from.
    """
    global _process_client
    pid = os.getpid()
    if _process_client is None or _process_client[0] != pid:
        _process_client = (pid, make_http_client(neighbours))
    return _process_client[1]


def is_retryable(exc: BaseException) -> bool:
    """True for failures a later attempt may not see: timeouts, network errors, 5xx, 408 and 429
    (SPEC §5)."""
    if isinstance(exc, RetryLater):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in RETRYABLE_4XX
    # RemoteProtocolError is a peer dropping the connection mid-answer; other protocol errors are
    # ours.
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return True
    # qdrant-client's REST errors, recognised by shape so that workers without qdrant-client can
    # import this module: UnexpectedResponse carries the status, ResponseHandlingException the error
    # it wraps.
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500
    source = getattr(exc, "source", None)
    return isinstance(source, BaseException) and is_retryable(source)
