"""The worker's side of dead letters: Celery's consumer hooks and the transport's poison signal,
each storing what it was handed as a dead letter before Celery takes the message off the queue."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery.worker.consumer import consumer as celery_consumer
from kombu.message import Message  # pants: no-infer-dep (with celery)

from ragcore.deadletters import store, transport
from ragcore.deadletters.store import Poison, Reason

#: Celery's own lines for these hooks (a traceback and the body each): the dead letter's one line
#: replaces them.
_REPLACED = frozenset(
    (
        celery_consumer.MESSAGE_DECODE_ERROR,
        celery_consumer.UNKNOWN_FORMAT,
        celery_consumer.UNKNOWN_TASK_ERROR,
        celery_consumer.INVALID_TASK_ERROR,
    )
)


class _ReplacedLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _REPLACED


class Consumer(celery_consumer.Consumer):  # type: ignore[misc]  # Celery ships no types
    """Celery's worker consumer (`worker_consumer`), each poison hook storing a dead letter first;
    Celery then acknowledges or rejects the message, marks the task failed, sends its events."""

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        store.record(_poison(message, Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}"))
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        store.record(_poison(message, Reason.INVALID_MESSAGE, "not a task message"))
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        poison = _poison(message, Reason.UNKNOWN_TASK, "")
        detail = f"no task named {poison.task_name!r} is registered on this worker"
        store.record(dataclasses.replace(poison, detail=detail))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        store.record(_poison(message, Reason.INVALID_MESSAGE, f"{type(exc).__name__}: {exc}"))
        super().on_invalid_task(body, message, exc)


def _poison(message: Message, reason: Reason, detail: str) -> Poison:
    headers = message.headers if isinstance(message.headers, dict) else {}
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    body = message.body
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "backslashreplace")
    return Poison(
        queue=str(info.get("routing_key") or ""),
        reason=reason,
        body=raw,
        detail=detail,
        task_name=_text(headers.get("task")),
        task_id=_text(headers.get("id")),
    )


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def _on_poison(queue: str, body: bytes, detail: str, **_: Any) -> None:
    store.record(Poison(queue=queue, reason=Reason.UNDECODABLE, body=body, detail=detail))


def connect() -> None:
    """In a worker process: store the transport's poison; only the dead letter's line is logged."""
    transport.poison_received.connect(_on_poison, weak=False, dispatch_uid="deadletters.store")
    logger = logging.getLogger(celery_consumer.__name__)
    if not any(isinstance(f, _ReplacedLines) for f in logger.filters):
        logger.addFilter(_ReplacedLines())
