"""Tracing is off unless OTEL_TRACES_EXPORTER names an exporter, and costs no import then; on, SQL
statements join the span they run in, log lines carry its ids, and client calls outside every span
start no trace. Each case runs in a fresh interpreter: tracing is configured once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from ragcore.tracing import Exporter, exporters


def run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RAGCORE_"))}
    clean["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, (Exporter.OTLP,)),
        ({"OTEL_TRACES_EXPORTER": " Console , otlp"}, (Exporter.CONSOLE, Exporter.OTLP)),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
    ],
)
def test_exporters_are_none_unless_named(environ: dict[str, str], expected: tuple[str]) -> None:
    assert exporters(environ) == expected


def test_an_unknown_exporter_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        exporters({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_off_the_query_path_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    out = run(
        """
        import sys
        # redis-py (8.x) imports the SDK's metrics itself whenever the SDK is installed: what
        # counts is what ours adds to that.
        import redis
        def otel(): return {m for m in sys.modules if m.startswith("opentelemetry")}
        before = otel()
        from ragcore import tracing
        from ragcore.logs import configure_logging
        from ragcore.query import reports, service
        from ragcore.deliveries import redriver
        configure_logging("test")
        assert tracing.configure("test") is False
        with tracing.span("nothing", parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"):
            assert tracing.current_traceparent() is None
        print(sorted(otel() - before), "ragcore.tracing.sdk" in sys.modules)
        """,
        RAGCORE_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
    )
    # printed after configure_logging: a JSON line like any other
    printed = [orjson.loads(line)["message"] for line in out.stderr.splitlines()]
    assert printed[-1] == "[] False", out.stderr


def test_on_sql_joins_its_span_log_lines_carry_its_ids_and_client_roots_are_dropped(
    tmp_path: Path,
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    out = run(
        """
        import logging
        import os
        from sqlalchemy import text
        from ragcore import tracing
        from ragcore.db import session_scope
        from ragcore.logs import configure_logging
        configure_logging("test")
        assert tracing.configure("test", os.environ["SPANS"])
        with session_scope() as session:  # outside every span: no trace of its own
            session.execute(text("SELECT 1"))
        with tracing.span("outer", answer=42):
            with session_scope() as session:
                session.execute(text("SELECT 2"))
            logging.getLogger("probe").info("inside")
        logging.getLogger("probe").info("outside")
        tracing.shutdown()
        """,
        OTEL_TRACES_EXPORTER="console",
        SPANS=str(spans_file),
        RAGCORE_DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite",
    )
    spans = [orjson.loads(line) for line in spans_file.read_text().splitlines()]
    [outer] = [s for s in spans if s["name"] == "outer"]
    assert outer["parent_id"] is None and outer["attributes"] == {"answer": 42}
    trace_id = outer["context"]["trace_id"]
    # every other span is a statement (or the connect) below "outer": the first SELECT made none
    others = [s for s in spans if s is not outer]
    assert others and all(
        s["kind"] == "SpanKind.CLIENT"
        and s["context"]["trace_id"] == trace_id
        and s["parent_id"] == outer["context"]["span_id"]
        for s in others
    ), others
    assert any(s["attributes"].get("db.statement") == "SELECT 2" for s in others), others
    lines = [orjson.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    inside = next(line for line in lines if line["message"] == "inside")
    outside = next(line for line in lines if line["message"] == "outside")
    assert inside["trace_id"] == trace_id.removeprefix("0x")
    assert inside["span_id"] == outer["context"]["span_id"].removeprefix("0x")
    assert "trace_id" not in outside and "otelTraceID" not in outside
