"""RedBeat's scheduler, made to ride out a broker outage instead of exiting."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import redis
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

log = logging.getLogger(__name__)

#: While the broker is down, Beat tries it again this often.
RETRY_SECONDS = 1.0


class OutageTolerantScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat has no type hints
    """RedBeat lets the first Redis error of a tick (extending its lock, reading the schedule) end
    the Beat process, and after a Redis restart that lost its keys it finds neither its lock nor
    its entries. Its `retry_period` option only covers calls through its own connection, not the
    lock, nor lost keys. This scheduler waits the outage out instead: a tick that hits a Redis
    error pauses; once Redis answers, it re-takes the leader lock (or stands by, if another Beat
    took it meanwhile) and re-installs the schedule with the last runs it knows, so an entry that
    ran just before the outage does not run again early, and one that came due fires once.
    """

    #: RedBeat's leader lock (its base class is untyped; None until taken).
    lock: redis.lock.Lock | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last_runs: dict[str, datetime] = {}
        self._broken = False
        super().__init__(*args, **kwargs)

    def reserve(self, entry: RedBeatSchedulerEntry) -> RedBeatSchedulerEntry:
        new_entry = super().reserve(entry)
        self._last_runs[new_entry.name] = new_entry.last_run_at
        return new_entry

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self._broken and not self._recover():
                return RETRY_SECONDS
            return float(super().tick(*args, **kwargs))
        except redis.RedisError as exc:  # LockError (our lock lost with Redis' keys) is one too
            if not self._broken:
                log.warning(
                    "beat: the broker is unreachable; scheduling resumes when it returns: %s", exc
                )
            self._broken = True
            return RETRY_SECONDS

    def _recover(self) -> bool:
        """Lock and schedule back in Redis; False while another Beat leads (this one stands by)."""
        client = get_redis(self.app)
        client.ping()
        if self.lock_key and not (self.lock is not None and self.lock.owned()):
            lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
            lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # as RedBeat's own lock
            if not lock.acquire(blocking=False):
                return False
            self.lock = lock
            log.info("beat: Acquired lock")
        self.setup_schedule()
        for name, last_run_at in self._last_runs.items():
            key = RedBeatSchedulerEntry.generate_key(self.app, name)
            try:
                stored = RedBeatSchedulerEntry.from_key(key, app=self.app)
            except KeyError:
                continue  # no longer in the schedule
            if stored.last_run_at is None or stored.last_run_at < last_run_at:
                stored.reschedule(last_run_at)
        self._broken = False
        log.info("beat: the broker is back; scheduling again")
        return True
