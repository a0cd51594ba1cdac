"""Ledger updates the database could not take yet: kept in order, merged per task, bounded.

While PostgreSQL is down a worker keeps running tasks (the broker is up); their ledger updates wait
here, in the process's ledger writer, and are written when the database returns, so no row stays
STARTED or PENDING for a task that ended. Updates of one task merge (a later value wins, as it would
have in the row); tasks stay in the order they were first updated. Past `limit` tasks the oldest
are dropped and counted: the reconciler rebuilds those rows (from the result backend, or by
publishing the task again, which its idempotency absorbs).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: Tasks kept per process at most: a few minutes of a busy worker's updates.
LIMIT = 20_000


class Backlog:
    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._rows: dict[str, dict[str, Any]] = {}  # insertion-ordered: oldest first
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, updates: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for task_id, values in updates:
            self._rows.setdefault(task_id, {}).update(values)
        while len(self._rows) > self._limit:
            del self._rows[next(iter(self._rows))]
            self.dropped += 1

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self._rows.items())

    def clear(self) -> tuple[int, int]:
        """Forget what was written; returns (rows written, rows dropped) since the last clear."""
        written, dropped = len(self._rows), self.dropped
        self._rows, self.dropped = {}, 0
        return written, dropped
