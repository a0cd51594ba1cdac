"""RedBeat's scheduler, made to ride out a broker outage instead of exiting."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import redis
from celery.schedules import schedstate
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

log = logging.getLogger(__name__)

#: While the broker is down, Beat tries it again this often.
RETRY_SECONDS = 1.0


class KeptEntry(RedBeatSchedulerEntry):  # type: ignore[misc]  # redbeat has no type hints
    """An entry whose last run was lost (its record in Redis is gone) waits for its next scheduled
    time; RedBeat would take "no last run" for "never ran" and fire it at once, outside its
    schedule (a daily reset at 14:00). A new entry never has no last run: installing it records
    its install time."""

    def is_due(self) -> schedstate:
        if self.enabled and self.last_run_at is None:
            log.warning("beat: the last run of %s was lost; it runs at its next time", self.name)
            self.reschedule(self.default_now())
        due: schedstate = super().is_due()
        return due


class OutageTolerantScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat has no type hints
    """RedBeat lets the first Redis error of a tick (extending its lock, reading the schedule) end
    the Beat process, and after a Redis restart that lost its keys it finds neither its lock nor
    its entries. Its `retry_period` option only covers calls through its own connection, not the
    lock, nor lost keys. This scheduler waits the outage out instead: a tick that hits a Redis
    error pauses; once Redis answers, it re-takes the leader lock (or stands by, if another Beat
    took it meanwhile) and re-installs the schedule with the last runs it knows, so an entry that
    ran just before the outage does not run again early, and one that came due fires once.

    Celery records an entry's run before publishing it, and RedBeat logs a failed publish and
    goes on: the run is lost. Here an entry advances only once its run is published; one whose
    publish failed (the broker away; Beat publishes only, so the result backend's Redis is not on
    its path) stays due, and each tick tries it again under the same task id, so it goes out once
    when the broker returns. An entry whose record
    Redis lost is installed again at the next tick, from the last run this Beat knows.
    """

    Entry = KeptEntry
    #: RedBeat's leader lock (its base class is untyped; None until taken).
    lock: redis.lock.Lock | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last_runs: dict[str, datetime] = {}
        #: entry name → the task id of its due run whose publish failed
        self._unsent: dict[str, str] = {}
        self._broken = False
        super().__init__(*args, **kwargs)

    def reserve(self, entry: RedBeatSchedulerEntry) -> RedBeatSchedulerEntry:
        new_entry = super().reserve(entry)
        self._last_runs[new_entry.name] = new_entry.last_run_at
        return new_entry

    def apply_async(
        self, entry: RedBeatSchedulerEntry, producer: Any = None, advance: bool = True, **kw: Any
    ) -> Any:
        task_id = self._unsent.setdefault(entry.name, str(uuid.uuid4()))
        entry.options = {**entry.options, "task_id": task_id}
        result = super().apply_async(entry, producer, advance=False, **kw)  # raises if unsent
        if entry.name in self._unsent:
            del self._unsent[entry.name]
            log.info("beat: %s published (task %s)", entry.name, task_id)
        # Published: should recording the run fail with Redis, the recovery must not send it again.
        self._last_runs[entry.name] = self.app.now()
        if advance:
            self.reserve(entry)
        return result

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self._broken and not self._recover():
                return RETRY_SECONDS
            self._install_lost()
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
        self._restore_last_runs(list(self._last_runs), installed=False)
        self._broken = False
        log.info("beat: the broker is back; scheduling again")
        return True

    def _install_lost(self) -> None:
        """Install again the static entries whose record is gone from Redis (RedBeat drops an entry
        it cannot load, and it would never fire again)."""
        static = self.app.redbeat_conf.schedule
        names = list(static)
        with get_redis(self.app).pipeline() as pipe:
            for name in names:
                pipe.exists(self.Entry.generate_key(self.app, name))
            present = pipe.execute()
        lost = [name for name, there in zip(names, present, strict=True) if not there]
        if lost:
            log.warning("beat: the schedule lost %s; installed again", ", ".join(lost))
            self.update_from_dict({name: static[name] for name in lost})
            self._restore_last_runs(lost, installed=True)

    def _restore_last_runs(self, names: list[str], installed: bool) -> None:
        """Entries count from the last run this Beat made: ones just `installed` again (their
        install time is no run), and ones whose stored run is older than it."""
        for name in names:
            if name not in self._last_runs:
                continue
            try:
                stored = self.Entry.from_key(self.Entry.generate_key(self.app, name), app=self.app)
            except KeyError:
                continue  # no longer in the schedule
            last = stored.last_run_at
            if installed or last is None or last < self._last_runs[name]:
                stored.reschedule(self._last_runs[name])
