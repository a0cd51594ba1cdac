"""One JSON object per log line, for every deployable, with the task or request it belongs to."""

from __future__ import annotations

import contextvars
import io
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

import orjson

#: Set by the API's middleware for the duration of one request.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

_real_stderr: TextIO | None = None  # where JSON lines go once stdout/stderr are wrapped

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: What ragcore.tracing's log correlation sets on each record; written as trace_id and span_id.
_TRACE_ATTRS = {"otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_task_context())
        if (request_id := request_id_var.get()) is not None:
            entry["request_id"] = request_id
        # "0" outside any span (tracing on), absent with tracing off.
        if (trace_id := getattr(record, "otelTraceID", "0")) != "0":
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "otelSpanID", "0")
        # Anything passed as `extra=` travels as its own field.
        entry.update(
            {
                k: v
                for k, v in vars(record).items()
                if k not in _STANDARD_ATTRS and k not in _TRACE_ATTRS and not k.startswith("_")
            }
        )
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


def raw_stderr() -> TextIO:
    """Where JSON lines go: the process's stderr before `configure_logging` wrapped it."""
    return _real_stderr or sys.stderr


class _LinesAsJson(io.TextIOBase):
    """A text stream that logs each line written to it: libraries that print (Celery's shutdown
    notices, tracebacks of dying threads) still produce one JSON object per line."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                self._logger.info(line.rstrip())
        return len(text)


def configure_logging(service: str, level: str = "INFO", task_lifecycle: bool = True) -> None:
    """Route every logger (ours, Celery's, uvicorn's) and stray prints through one JSON handler.

    `task_lifecycle=False` keeps Celery's per-task "received"/"succeeded" lines out (failures stay).
    """
    global _real_stderr
    if _real_stderr is None:
        _real_stderr = sys.__stderr__
        out = _LinesAsJson(logging.getLogger("stdout"))
        err = _LinesAsJson(logging.getLogger("stderr"))
        # The originals too, for code that writes to sys.__stderr__ (typeshed: Final
        # TextIOWrappers).
        sys.stdout = sys.__stdout__ = out  # type: ignore[misc,assignment]  # replaced on purpose
        sys.stderr = sys.__stderr__ = err  # type: ignore[misc,assignment]  # replaced on purpose
    handler = logging.StreamHandler(_real_stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings too become JSON lines, not raw stderr text
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.NOTSET if task_lifecycle else logging.WARNING)
