"""The OpenTelemetry SDK, set up: provider, sampler, exporters, instrumentations.

Imported only once tracing is on (`ragcore.tracing.configure`), so a deployable with tracing off
never loads it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from celery import signals
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.logging import LoggingInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from ragcore import tracing
from ragcore.db.session import engines
from ragcore.logs import raw_stderr


class EntryPoints(Sampler):
    """A trace starts where work enters (a request, a task, a publish, a relay round), never at a
    client call outside all of them: a heartbeat's Redis command or a poll's SQL would otherwise
    each be a trace of one span, several a second, burying the ones that matter."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)

    def get_description(self) -> str:
        return "EntryPoints"


class _AppendLines:
    """A file the console exporter appends to: one write per span, so processes sharing the file
    (the local stack) never interleave within a line."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, text: str) -> int:
        return os.write(self._fd, text.encode())

    def flush(self) -> None:
        pass


def _exporter(kind: tracing.Exporter, console_file: str | None) -> SpanExporter:
    if kind is tracing.Exporter.OTLP:
        # Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, _COMPRESSION itself.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    out: Any = _AppendLines(console_file) if console_file else raw_stderr()
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")


def install(service: str, chosen: Sequence[tracing.Exporter], console_file: str | None) -> None:
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, override this default name.
    resource = Resource.create({SERVICE_NAME: f"ragcore-{service}"})
    # An operator's OTEL_TRACES_SAMPLER wins (the SDK reads it when given no sampler).
    sampler = None if os.environ.get("OTEL_TRACES_SAMPLER") else ParentBased(EntryPoints())
    provider = TracerProvider(resource=resource, sampler=sampler)
    for kind in chosen:
        provider.add_span_processor(BatchSpanProcessor(_exporter(kind, console_file)))
    trace.set_tracer_provider(provider)
    _instrument()


def _instrument() -> None:
    # Producer side injects traceparent into each message's headers; worker side continues it.
    CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]  # its __init__ is untyped
    # Connected after the instrumentor's own task_prerun: its task span is current here.
    signals.task_prerun.connect(_link_from_header, weak=False, dispatch_uid="ragcore.trace_link")
    HTTPXClientInstrumentor().instrument()  # every neighbour call carries traceparent
    RedisInstrumentor().instrument()
    # Engines made from now on, and those made before (a prefork worker's parent made its own).
    # Its declared range ends before SQLAlchemy 2.1 (ours), whose engine events it uses are
    # unchanged: tracing_test.py proves the statement spans appear.
    SQLAlchemyInstrumentor().instrument(engines=engines(), skip_dep_check=True)
    # Sets otelTraceID/otelSpanID on each log record: ragcore.logs writes them as trace_id/span_id.
    LoggingInstrumentor().instrument(
        inject_trace_context=True, enable_log_auto_instrumentation=False
    )


def _link_from_header(task: Any = None, **_: Any) -> None:
    if task is not None:
        tracing.link_current_span(getattr(task.request, tracing.LINK_HEADER, None))


def context_of(traceparent: str) -> Context:
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def link_to(traceparent: str | None) -> Link | None:
    if not traceparent:
        return None
    context = trace.get_current_span(context_of(traceparent)).get_span_context()
    return Link(context) if context.is_valid else None
