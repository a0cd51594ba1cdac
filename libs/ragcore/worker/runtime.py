"""What every worker deployable shares: its app, its canary, its heartbeat, and how it starts."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
import threading
import time
from typing import Any

from celery import Celery, Task, signals
from celery.concurrency.base import BasePool
from celery.utils.nodenames import host_format
from celery.worker import state as worker_state
from celery.worker.request import Request

from ragcore import invariants, tracing
from ragcore.broker import broker_client, heartbeats, in_flight, revocation_feed, stop_flags
from ragcore.broker import held as broker_held
from ragcore.db import get_engine, session_scope
from ragcore.deadletters import consumer as dead_letters
from ragcore.logs import configure_logging
from ragcore.settings import Settings, get_settings
from ragcore.tasks import ledger
from ragcore.tasks.app import PermanentTaskError, app_settings, create_app, define_task
from ragcore.tasks.arguments import CanaryArgs
from ragcore.tasks.contracts import CANARIES, Queue
from ragcore.worker import health, reconnect, recovery

log = logging.getLogger(__name__)

#: How often the monitor notes the tasks this worker holds, for recovery after a hard kill.
RESERVED_NOTE_SECONDS = 0.5
#: How long the "this worker stops" note lives: longer than any grace period
#: (deploy/k8s/workers.yaml).
STOPPING_NOTE_SECONDS = 900


def create_worker_app(queue: Queue) -> Celery:
    """The app of the worker that consumes `queue` (and only it)."""
    app = create_app(f"worker-{queue.value}", queues=(queue,))
    # Celery's consumer, its poison hooks storing dead letters (a path: conf is shown by `inspect`).
    app.conf.worker_consumer = (
        f"{dead_letters.Consumer.__module__}:{dead_letters.Consumer.__name__}"
    )
    dead_letters.connect()
    ledger.connect_worker_signals()
    recovery.connect()
    reconnect.connect(app)
    _connect_monitor(_Monitor(queue, app_settings(app)))
    define_canary(app, queue)
    return app


def define_canary(app: Celery, queue: Queue) -> Task:
    """Register `queue`'s canary on `app`: it proves the worker consumes its queue."""

    @define_task(app, CANARIES[queue])
    def canary(self: Task, args: CanaryArgs) -> dict[str, Any]:
        """Proves this worker consumes its queue: answers with who ran it."""
        if args.sleep_seconds:
            steps = max(1, math.ceil(args.sleep_seconds / 0.25))
            ledger.report_progress(self, 0, steps)
            for done in range(1, steps + 1):
                time.sleep(args.sleep_seconds / steps)
                ledger.report_progress(self, done, steps)
        if args.fail:
            raise PermanentTaskError("the canary was asked to fail")
        return {
            "echo": args.echo,
            "queue": queue.value,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
        }

    return canary


class _Monitor:
    """The worker's main-process companion: heartbeat and last dequeue in Redis, revocations in
    memory.

    Celery keeps revoked ids in each worker's memory only. A worker loads the ledger's revocations
    before it consumes (and again once its broadcast mailbox listens, closing the gap between the
    two), then polls the revocation feed, so a revocation broadcast it missed still reaches it.
    """

    def __init__(self, queue: Queue, settings: Settings) -> None:
        self.queue = queue
        self.started_at = time.time()
        self.last_dequeue: float | None = None
        self._revocations_since = self.started_at - 300  # tolerates clock skew with the API's host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hostname = ""
        self._static: dict[str, Any] = {}
        self._noted: list[str] = []
        self._app: Celery | None = None
        self._settings = settings
        self._timer: Any = None
        self._stopping_noted = False
        #: When the consumer's event loop last ran a timer of ours (time.monotonic()).
        self._loop_ran_at = time.monotonic()
        self._loop_stalled = False
        #: Whether tasks run on the consumer's own thread (the solo pool): then a running task
        #: holds the loop, and is no stall.
        self._tasks_on_loop = False
        #: Ids received since the last tick: they no longer wait in the queue (ragcore.broker.held).
        self._received: list[str] = []

    def load_revocations(self) -> None:
        try:
            with session_scope() as session:
                ids = ledger.revoked_ids(session)
            worker_state.revoked.update(ids)
            if ids:
                log.info("loaded %d revoked task id(s) from the ledger", len(ids))
        except Exception:
            log.exception("could not load revoked task ids from the ledger")

    def start(self, consumer: Any) -> None:
        pool = consumer.pool
        self._hostname = consumer.hostname
        self._app = consumer.app
        self._timer = consumer.timer
        self._tasks_on_loop = type(pool).__module__ == "celery.concurrency.solo"
        # counted from here, not from the app's making: a slow start-up is no stalled loop
        self._loop_ran_at = time.monotonic()
        # The consumer's event loop fires its timer's entries between polls: this one proves the
        # loop runs, and the heartbeat thread beats only while it does (a wedged loop that would
        # consume nothing must not look alive to the peers that re-queue a lost worker's tasks).
        consumer.timer.call_repeatedly(
            min(1.0, self._settings.workers.heartbeat_seconds), self._loop_ran
        )
        self._static = {
            "queue": self.queue.value,
            "pid": os.getpid(),
            "pool": type(pool).__module__,
            # solo and threads pools cannot stop a running task (they keep the base class's method);
            # prefork (which binds its process pool's method at start) and the green pools can.
            "can_terminate": getattr(pool.terminate_job, "__func__", None)
            is not BasePool.terminate_job,
            "concurrency": int(consumer.controller.concurrency or 1),
            "started_at": self.started_at,
        }
        self.load_revocations()
        # a previous life under this name stopped
        stop_flags.clear_stopping(self._client(), self._hostname)
        self._thread = threading.Thread(target=self._run, name="ragcore-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            try:
                self.note_received()
                # The messages it held go back to the queue (kombu restores them): waiting again.
                broker_held.mark_published(self._client(), self.queue.value, self._noted)
                heartbeats.forget_worker(self._client(), self._hostname, [self.queue.value])
                # A warm shutdown hands its reserved messages back itself: nothing for the next
                # life.
                recovery.note_reserved(self._client(), self._hostname, [], 1)
            except Exception:
                log.warning("could not remove this worker's heartbeat", exc_info=True)

    def _client(self) -> Any:
        return broker_client(self._settings.redis)

    def _loop_ran(self) -> None:
        self._loop_ran_at = time.monotonic()

    def loop_runs(self, interval: float) -> bool:
        """Whether the consumer's loop ran within three heartbeat intervals (or runs a task)."""
        stalled = time.monotonic() - self._loop_ran_at
        if stalled <= 3 * interval or (self._tasks_on_loop and worker_state.active_requests):
            if self._loop_stalled:
                log.warning("the consumer's loop runs again: heartbeat resumed")
            self._loop_stalled = False
            return True
        if not self._loop_stalled:
            log.error(
                "the consumer's loop has not run for %.0fs: no heartbeat, so a live worker of the "
                "queue re-queues what this one holds",
                stalled,
            )
        self._loop_stalled = True
        return False

    def beat(self) -> None:
        settings = self._settings
        if not self.loop_runs(settings.workers.heartbeat_seconds):
            return
        client = self._client()
        fields = {
            **self._static,
            "active": len(worker_state.active_requests),
            "last_dequeue": self.last_dequeue,
        }
        # stamped on the Redis server's clock (ragcore.broker.heartbeats)
        heartbeats.record_worker(
            client,
            self._hostname,
            [self.queue.value],
            fields,
            heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds),
        )
        recovery.requeue_lost(
            self._app, client, self.queue.value, settings.workers.lost_after_seconds, self._hostname
        )
        ids, self._revocations_since = revocation_feed.revocations_since(
            client, self._revocations_since
        )
        # Adding from this thread is safe: membership is a dict lookup, and only new ids are added.
        new = [task_id for task_id in ids if task_id not in worker_state.revoked]
        if new:
            worker_state.revoked.update(new)
            log.info("revoked through the feed: %s", new)

    def received(self, task_id: str) -> None:
        self._received.append(task_id)  # from the consumer's thread: list.append is atomic

    def note_received(self) -> None:
        """Take the ids received since the last tick off their queue's waiting set, in one call."""
        ids, self._received = self._received, []
        try:
            broker_held.mark_received(self._client(), self.queue.value, ids)
        except Exception:
            # kept for the next tick: an id left in the waiting set reads "the broker holds it",
            # and the reconciler would never publish it again (a failover mid-tick)
            self._received[:0] = ids
            raise

    def held(self) -> list[str]:
        """Every task this worker holds: running, reserved ahead, and waiting on a countdown or ETA
        in its timer (a retry), each of which is also in the transport's `unacked` hash."""
        held = {request.id for request in list(worker_state.reserved_requests)}
        for entry in list(self._timer.schedule.queue) if self._timer is not None else ():
            request = next(iter(getattr(entry.entry, "args", None) or ()), None)
            if isinstance(request, Request):
                held.add(request.id)
        return sorted(held)

    def note_reserved(self, again: bool = False) -> None:
        """Note in Redis the tasks this worker holds, when they changed, or `again` (a Redis that
        lost its data lost the note; see ragcore.worker.recovery and ragcore.tasks.reconcile)."""
        try:
            held = self.held()
        except RuntimeError:  # the consumer changed the set meanwhile: next tick
            return
        if held != self._noted or again:
            recovery.note_reserved(
                self._client(),
                self._hostname,
                held,
                self._settings.redis.visibility_timeout_seconds,
            )
            in_flight.note_in_flight(self._client(), self.queue.value, self._hostname, held)
            self._noted = held

    def note_stopping(self) -> None:
        """Once a shutdown began, tell the running tasks, so a long one can hand itself back.

        Celery's warm shutdown waits for running tasks, and its pool processes hear no signal of it.
        Its SIGTERM handler sends `worker_shutting_down` only from a process billiard calls
        "MainProcess", and in our workers that signal was observed never to arrive; the flag the
        handler always sets (`should_stop`, or `should_terminate`) is what the monitor watches
        instead.
        """
        if not self._stopping_noted and (
            worker_state.should_stop is not None or worker_state.should_terminate is not None
        ):
            stop_flags.note_stopping(self._client(), self._hostname, STOPPING_NOTE_SECONDS)
            self._stopping_noted = True
            log.info("shutting down: running tasks that can hand themselves back do so")

    def _run(self) -> None:
        interval = self._settings.workers.heartbeat_seconds
        next_beat = 0.0
        while True:
            try:
                self.note_stopping()
                beat = time.monotonic() >= next_beat
                if beat:
                    self.beat()
                    next_beat = time.monotonic() + interval
                self.note_received()
                self.note_reserved(again=beat)
            except Exception:
                log.warning("heartbeat failed", exc_info=True)
            if self._stop.wait(min(interval, RESERVED_NOTE_SECONDS)):
                return


def _connect_monitor(monitor: _Monitor) -> None:
    @signals.worker_init.connect(weak=False, dispatch_uid="worker.load_revocations")
    def _init(**_: Any) -> None:
        monitor.load_revocations()

    @signals.worker_ready.connect(weak=False, dispatch_uid="worker.heartbeat_start")
    def _ready(sender: Any, **_: Any) -> None:
        monitor.start(sender)

    @signals.task_received.connect(weak=False, dispatch_uid="worker.dequeued")
    def _received(request: Any, **_: Any) -> None:
        monitor.last_dequeue = time.time()
        monitor.received(request.id)

    @signals.worker_shutdown.connect(weak=False, dispatch_uid="worker.heartbeat_stop")
    def _shutdown(**_: Any) -> None:
        monitor.stop()

    @signals.worker_process_init.connect(weak=False, dispatch_uid="worker.fresh_db_pool")
    def _child(**_: Any) -> None:
        # A forked pool process must not share the parent's pooled database connections.
        get_engine().dispose(close=False)


def run_worker(app: Celery, queue: Queue, argv: list[str]) -> None:
    """Start consuming `queue`; extra command-line arguments go to `celery worker`.

    `--healthcheck [--hostname=NAME]` instead checks that the worker NAME (default: this host's
    worker
    of `queue`) is consuming, and exits 0 if so, 1 if not: each worker image's liveness probe.
    `--help` prints this and Celery's worker options, touching neither Redis nor the database.
    """
    if "--help" in argv:
        print(
            f"usage: worker [--healthcheck [--hostname=NAME]] [CELERY WORKER OPTIONS]\n\n"
            f"Consumes the {queue.value} queue; "
            "--healthcheck instead exits 0 while the worker NAME consumes it.\n"
            "Configured by RAGCORE_* environment variables. Celery's worker options follow.\n",
            flush=True,
        )
        app.worker_main(["worker", "--help"])
        return
    settings = get_settings()  # an entrypoint: each services/<queue>/worker.py's main
    configure_logging(f"worker-{queue.value}", settings.log_level, settings.log_task_lifecycle)
    if tracing.exporters():
        from ragcore.tracing import worker_signals

        worker_signals.connect(f"worker-{queue.value}", settings.trace_file)
    if "--healthcheck" in argv:
        sys.exit(healthcheck(app, queue, argv))
    try:
        invariants.check(settings, broker_client(settings.redis), service=f"worker {queue.value}")
    except invariants.InvariantError as exc:
        log.critical("%s", exc)
        sys.exit(str(exc))
    app.worker_main(
        [
            "--quiet",  # no banner on stdout: every line a deployable writes is JSON
            "worker",
            f"--queues={queue.value}",
            f"--hostname={queue.value}@%h",
            f"--concurrency={settings.workers.concurrency.get(queue.value, 1)}",
            f"--prefetch-multiplier={settings.workers.prefetch.get(queue.value, 1)}",
            f"--loglevel={settings.log_level}",
            *argv,
        ]
    )


def healthcheck(app: Celery, queue: Queue, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="worker --healthcheck")
    parser.add_argument("--healthcheck", action="store_true")
    parser.add_argument("-n", "--hostname", default=f"{queue.value}@%h")
    options, _ = parser.parse_known_args(argv)
    hostname = host_format(options.hostname)
    try:
        verdict = health.check(app, app_settings(app), hostname, queue.value)
    except Exception as exc:  # the broker is unreachable: this worker cannot consume either
        verdict = health.Health(False, f"check failed: {type(exc).__name__}: {exc}")
    # A JSON line like every other line a deployable writes (the orchestrator keeps it with the
    # probe).
    log.log(
        logging.INFO if verdict.healthy else logging.ERROR,
        "%s: %s: %s",
        hostname,
        "healthy" if verdict.healthy else "UNHEALTHY",
        verdict.reason,
    )
    return 0 if verdict.healthy else 1
