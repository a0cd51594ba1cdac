"""The reconciler's loop: a round of `ragcore.tasks.reconcile` every `RAGCORE_RECONCILE_SECONDS`,
in Beat.

In Beat rather than as a periodic task on a worker: the reconciler exists for the moments the
broker lost its messages, and a Beat-sent task is a message like the others (lost with them, and
waiting behind a million others in a deep queue); a loop needs no queue, no consuming worker of its
own, and starts its first round by itself once Redis answers again. Beat already publishes from the
database on a timer (the report relay). Two Beats (a handover, one started by mistake) take turns
through a non-blocking Redis lock, and a round that outlives it is still safe (each act is a
conditional update of its row).
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery
from sqlalchemy import text

from ragcore.background import PeriodicThread
from ragcore.db import session_scope
from ragcore.db.outage import DATABASE_ERRORS, Outage
from ragcore.settings import Settings
from ragcore.tasks.locks import lock_client, periodic_lock
from ragcore.tasks.reconcile import reconcile_round, settle_seconds

log = logging.getLogger(__name__)

LOCK = "reconcile"


class Reconciler(PeriodicThread):
    """Beat's `reconciler` thread; it tells database outages itself (see `_database_returns`)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__("reconciler", settings.reconcile.interval_seconds, self.round)
        self._app = app
        self._settings = settings
        self._database = Outage("reconciler")
        self._broker = Outage("reconciler", "the broker")
        #: After a database outage, the workers' ledger writers still write what they kept: no
        #: round acts on rows that may be stale until then.
        self._quiet_until = 0.0

    def round(self) -> None:
        if time.monotonic() < self._quiet_until:
            return
        # A round is bounded (a batch of rows): the lock outlives it, and frees itself if Beat dies.
        ttl = int(max(60.0, 2 * self._settings.reconcile.interval_seconds))
        try:
            if self._database.ongoing:
                self._database_returns()
                return
            with periodic_lock(lock_client(self._settings.redis), LOCK, ttl=ttl) as acquired:
                if acquired:
                    reconcile_round(self._app, self._settings)
        except DATABASE_ERRORS as exc:
            self._database.failed(exc)
            return
        except redis.RedisError as exc:
            self._broker.failed(exc)
            return
        except Exception:
            log.exception("reconcile round failed")
            return
        self._broker.over()

    def _database_returns(self) -> None:
        """Once the database answers again, wait for the workers' ledger writers to write what they
        kept: until then a row may say PENDING for a task that ended."""
        with session_scope() as session:
            session.execute(text("SELECT 1"))
        self._database.over()
        self._quiet_until = time.monotonic() + settle_seconds(self._settings)
