"""An OpenTelemetry collector stand-in: OTLP/HTTP traces in (protobuf), spans kept to be read back.

    python -m ragcore_dev.standins.collector --port 4318

Deployables export to it with `OTEL_TRACES_EXPORTER=otlp` and
`OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`. Control API: GET /_control/spans
(`?trace_id=<32 hex>` for one trace) and POST /_control/reset. Each span is a JSON object: service,
name, kind, trace_id, span_id, parent_span_id (null for a root), links ([{trace_id, span_id}]) and
attributes (strings, numbers and booleans).
"""

from __future__ import annotations

import argparse
import gzip
import threading
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from ragcore_dev.standins.server import (
    App,
    HTTPError,
    Request,
    Response,
    Running,
    json_response,
    run_until_signalled,
    start_in_thread,
)

_KINDS = {value: name.removeprefix("SPAN_KIND_") for name, value in Span.SpanKind.items()}
_SCALARS = {"string_value", "int_value", "double_value", "bool_value"}


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field in _SCALARS else str(value)


def _span(service: str, span: Span) -> dict[str, Any]:
    return {
        "service": service,
        "name": span.name,
        "kind": _KINDS.get(span.kind, str(span.kind)),
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "links": [{"trace_id": k.trace_id.hex(), "span_id": k.span_id.hex()} for k in span.links],
        "attributes": {a.key: _value(a.value) for a in span.attributes},
    }


class CollectorApp(App):
    name = "collector"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._spans: list[dict[str, Any]] = []
        self.route("POST", "/v1/traces", self.receive)
        self.route("GET", "/_control/spans", self.control_spans)
        self.route("POST", "/_control/reset", self.control_reset)

    def receive(self, request: Request) -> Response:
        body = request.body
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(body)
        except Exception as exc:  # a malformed body is the sender's fault
            raise HTTPError(400, f"not an OTLP ExportTraceServiceRequest: {exc}") from exc
        received: list[dict[str, Any]] = []
        for resource_spans in export.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                received.extend(_span(service, s) for s in scope_spans.spans)
        with self._lock:
            self._spans.extend(received)
        return Response(
            200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
        )

    def spans(self, trace_id: str | None = None) -> list[dict[str, Any]]:
        """Spans received so far, in arrival order, optionally of one trace."""
        with self._lock:
            return [s for s in self._spans if trace_id is None or s["trace_id"] == trace_id]

    def control_spans(self, request: Request) -> Response:
        return json_response({"spans": self.spans(request.query.get("trace_id"))})

    def control_reset(self, _: Request) -> Response:
        with self._lock:
            self._spans.clear()
        return json_response({"ok": True})


def start_collector(port: int = 0) -> Running[CollectorApp]:
    """Serve on 127.0.0.1 in a background thread; `.url`, `.app.spans()`, `.stop()`."""
    return start_in_thread(CollectorApp(), port=port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    run_until_signalled(CollectorApp(), args.host, args.port)


if __name__ == "__main__":
    main()
