"""One JSON object per log line, for every deployable, with the task or request it belongs to."""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import datetime, timezone

import orjson

#: Set by the API's middleware for the duration of one request.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_task_context())
        if (request_id := request_id_var.get()) is not None:
            entry["request_id"] = request_id
        # Anything passed as `extra=` travels as its own field.
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _task_context() -> dict[str, str]:
    # Imported lazily: the API logs too, and must not pay for Celery's task machinery here.
    from celery import current_task

    task = current_task
    if task and task.request and task.request.id:
        return {"task_id": task.request.id, "task_name": task.name}
    return {}


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger (ours, Celery's, uvicorn's) through one JSON handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
