"""The one Celery app factory that every deployable uses, and the way a worker defines a task."""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from celery import Celery, Task, current_app, signals
from celery._state import _set_task_join_will_block
from celery.exceptions import Ignore, Reject
from celery.signals import setup_logging
from kombu.entity import Queue as KombuQueue
from pydantic import ValidationError

from ragcore import deadletters, redis_clients
from ragcore.clients.transport import is_retryable
from ragcore.logs import configure_logging
from ragcore.settings import Settings, get_settings
from ragcore.tasks import contracts, ledger
from ragcore.tasks.contracts import Queue, TaskContract
from ragcore.tasks.locks import lock_client, periodic_lock

log = logging.getLogger(__name__)

#: Publishing retries: enough for a blip, short enough that a caller never hangs on a dead broker.
_FAIL_FAST = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class PermanentTaskError(Exception):
    """A failure that retrying cannot fix (bad arguments, a 4xx from a neighbour)."""


#: The settings each app was made with: Celery, not our code, calls the task bodies, so they read
#: these (`app_settings(self.app)`) instead of the process's `get_settings()`.
_MADE_WITH: weakref.WeakKeyDictionary[Celery, Settings] = weakref.WeakKeyDictionary()


def create_app(
    service: str, settings: Settings | None = None, queues: tuple[Queue, ...] = ()
) -> Celery:
    """A Celery app with our reliability defaults; a worker passes the queues it consumes.

    An entrypoint: without `settings` it reads the process's (`celery -A services.<queue>.worker`
    makes the app at import, with no entrypoint of ours before it)."""
    settings = settings or get_settings()
    longest = contracts.longest_time_limit()
    if settings.redis.visibility_timeout_seconds <= longest:
        raise RuntimeError(
            f"visibility timeout ({settings.redis.visibility_timeout_seconds}s) "
            f"must exceed the longest task time limit ({longest}s), "
            "or Redis redelivers tasks still running"
        )
    app = Celery(service, set_as_current=True)
    # Timeouts (and with Sentinel, the master's name and the sentinels) for the transport and the
    # backend alike: their connections are kombu's and Celery's, not ragcore.redis_clients'.
    transport = {
        "visibility_timeout": settings.redis.visibility_timeout_seconds,
        **redis_clients.transport_options(settings.redis),
    }
    app.conf.update(
        broker_url=settings.redis.broker,
        # kombu's Redis transport, except that poison is set aside, not fatal (ragcore.deadletters)
        broker_transport=deadletters.transport_for(settings.redis.broker),
        result_backend=settings.redis.result_backend,
        broker_transport_options=transport,
        # The Redis backend subscribes to each sent task's result before publishing; its default
        # policy retries that 20 times, a second apart, when Redis is down. Bounded, a publisher
        # (the report relay, an API request) fails in well under a second and tries again later.
        result_backend_transport_options={**transport, "retry_policy": _FAIL_FAST},
        redis_socket_timeout=settings.redis.read_timeout_seconds,
        redis_socket_connect_timeout=settings.redis.connect_timeout_seconds,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2.0,
        task_publish_retry_policy=_FAIL_FAST,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        result_expires=settings.redis.result_expires_seconds,
        result_extended=True,  # status answers carry the task's name and queue
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # Workers' task events are what Flower shows (received, started, succeeded...). No
        # `task-sent` event per publish: it cost each publisher (the report relay: two per query) a
        # second Redis PUBLISH, and Flower one more event to digest, for a state, PENDING, that the
        # ledger and the status API already tell.
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        timezone=settings.timezone,
        enable_utc=True,
        task_routes={c.name: {"queue": c.queue.value} for c in contracts.BY_NAME.values()},
        task_queues=[KombuQueue(q.value, routing_key=q.value) for q in (queues or tuple(Queue))],
        task_default_queue=(queues[0] if queues else Queue.SYNC).value,
    )
    _MADE_WITH[app] = settings
    return app


def publish_only() -> None:
    """Say of this process that it publishes tasks and never waits for their results (Beat).

    Celery's Redis result backend SUBSCRIBEs to each sent task's result channel, so that `get()`
    could wait on it, and UNSUBSCRIBEs once the AsyncResult is collected: two round trips more per
    publish (the report relay: four per query) for results nobody in the process reads. Celery
    skips them where a wait would be refused anyway (inside a worker's tasks); this is that flag,
    for the whole process. A `get()` here then raises instead of waiting.
    """
    _set_task_join_will_block(True)


def app_settings(app: Celery) -> Settings:
    """The settings `app` was made with (`create_app`); an app made elsewhere (a test's
    pytest-celery app) reads the process's."""
    return _MADE_WITH.get(app) or get_settings()


@setup_logging.connect
def _json_logging(**_: Any) -> None:
    # Celery calls this in every worker/beat process instead of installing its own handlers: an
    # entrypoint of Celery's, before any app of ours may be current.
    settings = get_settings()
    configure_logging(current_app.main or "celery", settings.log_level, settings.log_task_lifecycle)


def will_retry(task: Task, contract: TaskContract, exc: BaseException) -> bool:
    """Whether `define_task` retries the attempt of `task` that raised `exc` (False: it is the
    last)."""
    return is_retryable(exc) and task.request.retries < contract.retry.max_retries


def _dead_letter(
    task: Task,
    contract: TaskContract,
    positional: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: Exception,
) -> None:
    """Keep a task whose arguments fail its contract as a dead letter too (it also ends FAILURE),
    so every kind of poison is listed and counted in one place."""
    body = orjson.dumps(
        {"args": positional, "kwargs": kwargs}, option=orjson.OPT_SORT_KEYS, default=repr
    )
    deadletters.record(
        deadletters.Poison(
            queue=contract.queue.value,
            reason=deadletters.Reason.INVALID_ARGUMENTS,
            body=body,
            detail=str(exc),
            task_name=contract.name,
            task_id=task.request.id,
        )
    )


def _announce_revoked(task: Task, contract: TaskContract) -> None:
    """A revocation the ledger kept and the worker forgot (Celery remembers a revoked id for
    `REVOKE_EXPIRES`, 3 h): tell it as Celery tells one it remembered, so the result backend says
    REVOKED rather than STARTED, and the ledger's receiver learns the name and queue of an id
    revoked before any worker saw it."""
    task.backend.mark_as_revoked(
        task.request.id, "revoked", request=task.request, store_result=contract.store_result
    )
    signals.task_revoked.send(
        sender=task, request=task.request, terminated=False, signum=None, expired=False
    )


def define_task(
    app: Celery, contract: TaskContract, **options: Any
) -> Callable[[Callable[..., Any]], Task]:
    """Register `fn` under its contract: name, limits, validated arguments, narrow retries.

    Network errors and 5xx are retried with exponential backoff and jitter up to the contract's
    limit; bad arguments and 4xx fail at once. `fn` receives the validated argument model. An
    exclusive contract's run holds the task's lock (at most its hard time limit, so a killed run's
    lock frees itself by then) or returns `SKIPPED`.
    """

    def decorator(fn: Callable[..., Any]) -> Task:
        def run(self: Task, *positional: Any, **kwargs: Any) -> Any:
            # Atomic with a revocation (ledger.revoke): revoked while it waited, it never runs.
            started = ledger.claim_start(
                self.request.id, self.request.hostname, contract.name, contract.queue.value, kwargs
            )
            if not started:
                log.info(
                    "%s %s was revoked before it started: not run", contract.name, self.request.id
                )
                _announce_revoked(self, contract)
                raise Ignore()
            try:
                if positional:
                    raise ValueError("contracts take keyword arguments only")
                args = contract.args.model_validate(kwargs)
            except (ValidationError, ValueError) as exc:
                _dead_letter(self, contract, positional, kwargs, exc)
                raise PermanentTaskError(f"invalid arguments for {contract.name}: {exc}") from None
            if not contract.exclusive:
                return attempt(self, args)
            with periodic_lock(
                lock_client(app_settings(app).redis), contract.name, ttl=contract.time_limit
            ) as acquired:
                return attempt(self, args) if acquired else dict(contracts.SKIPPED)

        def attempt(self: Task, args: Any) -> Any:
            try:
                return fn(self, args)
            except Reject:
                raise
            except Exception as exc:
                if will_retry(self, contract, exc):
                    countdown = contract.retry.countdown(self.request.retries, random.random())
                    log.warning("retrying %s in %.1fs: %s", contract.name, countdown, exc)
                    raise self.retry(
                        exc=exc, countdown=countdown, max_retries=contract.retry.max_retries
                    ) from exc
                raise

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return app.task(
            run,
            bind=True,
            name=contract.name,
            queue=contract.queue.value,
            soft_time_limit=contract.soft_time_limit,
            time_limit=contract.time_limit,
            ignore_result=not contract.store_result,
            track_started=contract.store_result,
            acks_late=True,
            **options,
        )

    return decorator
