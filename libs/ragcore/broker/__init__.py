"""The broker seen from outside, one module per thing kept in Redis:

- `client`: the broker's Redis client
- `depths`: what waits in each queue and since when (`QueueStats`), the publish-time stamp
- `heartbeats`: workers' heartbeats, live and lost workers
- `in_flight`: the tasks each worker holds, the list KEDA reads
- `stop_flags`: a stopping worker tells its tasks
- `revocation_feed`: revoked ids for running workers
- `workers`: the bounded broadcast that asks the workers; since when a task's worker is lost
"""

from ragcore.broker import (
    client,
    depths,
    heartbeats,
    in_flight,
    revocation_feed,
    stop_flags,
    workers,
)
from ragcore.broker.client import broker_client
from ragcore.broker.depths import QueueStats, all_queue_stats
from ragcore.broker.heartbeats import live_workers

__all__ = [
    "QueueStats",
    "all_queue_stats",
    "broker_client",
    "client",
    "depths",
    "heartbeats",
    "in_flight",
    "live_workers",
    "revocation_feed",
    "stop_flags",
    "workers",
]
