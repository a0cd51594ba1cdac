"""What the worker's heartbeat thread keeps when the broker fails under it."""

from __future__ import annotations

import pytest
import redis

from ragcore.settings import Settings
from ragcore.tasks.contracts import Queue
from ragcore.worker import runtime


class _FailingOnce:
    """A broker client whose first ZREM fails, as one does in the seconds of a failover."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self.failures = 1

    def zrem(self, _key: str, *ids: str) -> int:
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("Connection closed by server.")
        self.removed.extend(ids)
        return len(ids)


def test_received_ids_survive_a_failed_tick_and_leave_the_waiting_set_at_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monitor = runtime._Monitor(Queue.NOTIFICATIONS, Settings())
    client = _FailingOnce()
    monkeypatch.setattr(monitor, "_client", lambda: client)
    monitor.received("a")
    monitor.received("b")
    with pytest.raises(redis.ConnectionError):
        monitor.note_received()
    monitor.received("c")  # received meanwhile
    monitor.note_received()
    assert sorted(client.removed) == ["a", "b", "c"]
