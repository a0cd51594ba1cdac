"""A named background thread that runs one round of work every `interval` seconds until stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicThread:
    """Runs `round_` every `interval` seconds on a daemon thread called `name`; a round that raises
    is logged and the next one runs on time."""

    def __init__(self, name: str, interval: float, round_: Callable[[], object]) -> None:
        self._interval = interval
        self._round = round_
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        # Background work: where it shares a host's CPUs (the local stack), the answers come first.
        with contextlib.suppress(AttributeError, OSError):
            # this thread only (Linux)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stop.wait(self._interval):
            try:
                self._round()
            except Exception:
                log.exception("%s round failed", self._thread.name)
