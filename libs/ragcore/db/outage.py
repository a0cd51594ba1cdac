"""A database outage told in two lines: one when it begins, one when it ends, with counts.

A loop that meets a database it cannot reach (the report relay, the re-driver, the reconciler, a
worker's ledger writer) would otherwise log a traceback per round, several a second, for the whole
outage. Each such loop keeps one `Outage` and reports every failure and every success to it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import exc

log = logging.getLogger(__name__)

#: What a database that is down, restarting or cut off raises (a refused or dropped connection).
DATABASE_ERRORS: tuple[type[Exception], ...] = (exc.OperationalError, exc.InterfaceError)


class Outage:
    """The state of one loop's outage: `failed` on each failure, `over` after each success."""

    def __init__(self, who: str, what: str = "the database") -> None:
        self.who = who
        self.what = what
        self._since: float | None = None
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            log.error(
                "%s: %s is unreachable; waiting for it (%s: %s)",
                self.who,
                self.what,
                type(error).__name__,
                str(error).strip().splitlines()[0] if str(error).strip() else "",
            )

    def over(self, **counts: Any) -> None:
        """A success: if an outage was ongoing, say it ended, with `counts` of what caught up."""
        if self._since is None:
            return
        took = time.monotonic() - self._since
        detail = "".join(f", {name.replace('_', ' ')}: {n}" for name, n in counts.items())
        log.warning(
            "%s: %s is back after %.1fs (%d failed attempt(s)%s)",
            self.who,
            self.what,
            took,
            self.failures,
            detail,
        )
        self._since, self.failures = None, 0
