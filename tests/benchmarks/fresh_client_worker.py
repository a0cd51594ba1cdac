"""The notifications worker with the per-task-client baseline: a new httpx client for every task
(benchmark only).

    PYTHONPATH=libs:. python -m tests.benchmarks.fresh_client_worker --concurrency=1

Everything else is the shipped worker (`services.notifications.worker`).
"""

from __future__ import annotations

import httpx

from ragcore.clients.transport import make_http_client
from ragcore.settings import NeighbourSettings
from services.notifications import tasks, worker

_previous: list[httpx.Client] = []


def fresh_client(neighbours: NeighbourSettings) -> httpx.Client:
    """A new client per call, the previous one closed (else its sockets would pile up)."""
    while _previous:
        _previous.pop().close()
    client = make_http_client(neighbours)
    _previous.append(client)
    return client


tasks.http_client = fresh_client

if __name__ == "__main__":
    worker.main()
