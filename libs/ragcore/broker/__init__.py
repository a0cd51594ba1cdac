"""The broker seen from outside: queue depths, the oldest waiting task, live workers, revocations,
and the bounded broadcast that asks the workers."""

from ragcore.broker import queue_stats, workers
from ragcore.broker.queue_stats import QueueStats, all_queue_stats, broker_client, live_workers

# `queue_stats` here is the module (its function of the same name: `queue_stats.queue_stats`).
__all__ = [
    "QueueStats",
    "all_queue_stats",
    "broker_client",
    "live_workers",
    "queue_stats",
    "workers",
]
