"""Traces (OpenTelemetry), off unless `OTEL_TRACES_EXPORTER` names an exporter.

Every entrypoint calls `configure(service)` once (a prefork worker once in each pool process:
`ragcore.tracing.worker_signals`). Configured by the standard variables: `OTEL_TRACES_EXPORTER`
(`otlp`, `console`, `none`; a comma-separated list), `OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`... The specification's default exporter is
`otlp`; ours is `none`, so a deployable never sends to a collector nobody configured. Off, neither
the SDK nor an instrumentation is imported, and the helpers below cost a flag test.

One query's trace: the API request, its SQL, the vector search, the relay's publish of its reports
(parented on the query's span context, stored with the message), each report task and its request to
Users (`traceparent`). A task published later on behalf of another span carries that span's context
in `LINK_HEADER`, and its span links to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

#: Celery message header: the traceparent of the span a task's span links to (the query whose report
#: it is; a delivery's first attempt, for its re-drive).
LINK_HEADER = "ragcore_link"


class Exporter(StrEnum):
    OTLP = "otlp"
    CONSOLE = "console"
    NONE = "none"


_state: dict[str, str] = {}  # "service" once configured with an exporter


def exporters(environ: Mapping[str, str] = os.environ) -> tuple[Exporter, ...]:
    """The exporters `OTEL_TRACES_EXPORTER` names (none unless set; `OTEL_SDK_DISABLED` wins)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    try:
        chosen = tuple(Exporter(n) for n in names if n)
    except ValueError:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: "
            f"expected a list of {', '.join(e.value for e in Exporter)}"
        ) from None
    return tuple(e for e in chosen if e is not Exporter.NONE)


def enabled() -> bool:
    return bool(_state)


def configure(service: str, console_file: str | None = None) -> bool:
    """Install the tracer provider, exporters and instrumentations if tracing is on; once per
    process. `console_file` is where the console exporter appends (one JSON span per line)."""
    if _state:
        return True
    chosen = exporters()
    if not chosen:
        return False
    from ragcore.tracing import sdk  # only now: off, the SDK stays unimported

    sdk.install(service, chosen, console_file)
    _state["service"] = service
    return True


def shutdown() -> None:
    """Export what is buffered (a pool process ends without running atexit handlers)."""
    if _state:
        from opentelemetry import trace

        provider: Any = trace.get_tracer_provider()
        with contextlib.suppress(Exception):
            provider.shutdown()


def instrument_app(app: FastAPI) -> None:
    """Trace the API's requests (health probes excepted)."""
    if _state:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz")


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with work that continues later."""
    if not _state:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def span(
    name: str,
    parent: str | None = None,
    links: tuple[str | None, ...] = (),
    **attributes: str | int | float | bool,
) -> Iterator[None]:
    """A span around the block: child of `parent` (a traceparent) if given, else of the current
    span; linked to each traceparent in `links`. Nothing when tracing is off."""
    if not _state:
        yield
        return
    from opentelemetry import trace

    from ragcore.tracing.sdk import context_of, link_to

    tracer = trace.get_tracer("ragcore")
    with tracer.start_as_current_span(
        name,
        context=context_of(parent) if parent else None,
        links=[link for link in map(link_to, links) if link is not None],
        attributes=attributes,
    ):
        yield


def link_current_span(traceparent: str | None) -> None:
    """Link the current span (a task's) to `traceparent`."""
    if _state and traceparent:
        from opentelemetry import trace

        from ragcore.tracing.sdk import link_to

        link = link_to(traceparent)
        if link is not None:
            trace.get_current_span().add_link(link.context)
