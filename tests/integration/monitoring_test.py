"""Every metric the dashboard and the alert rules name is one the real API's /metrics serves, and
a ServiceMonitor's bearer token is accepted where X-API-Key is."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import ADMIN_KEY, QUERY_KEY, Stack, running_stack

MONITORING = Path(__file__).parents[2] / "deploy/monitoring"
#: Sample names a family of each type exposes.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels, keywords or numbers)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)  # matchers, ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set(re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text))
    return {n for n in names - KEYWORDS if not re.fullmatch(r"\d.*|e\d*", n)}


def dashboard_exprs() -> list[str]:
    panels = json.loads((MONITORING / "dashboard.json").read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as stack:
        stack.start_api()
        yield stack


@pytest.fixture(scope="module")
def served(stack: Stack) -> set[str]:
    with stack.api() as api:
        response = api.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        family.name + suffix
        for family in text_string_to_metric_families(response.text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_the_name_parser_finds_metrics_and_nothing_else() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{cached="x"}[5m]))) / '
        "clamp_min(sum(b_total), 1e-9) > on (queue) c and time() - d"
    ) == {"a_bucket", "b_total", "c", "d"}


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_every_metric_named_is_served_by_the_live_api(where: str, served: set[str]) -> None:
    exprs = dashboard_exprs() if where == "dashboard" else alert_exprs()
    named = set().union(*(metric_names(e) for e in exprs))
    assert named and all(n.startswith("ragcore_") for n in named), named
    assert named <= served, f"{where} names metrics /metrics does not serve: {named - served}"


def test_metrics_take_the_admin_key_as_a_bearer_token_too(stack: Stack) -> None:
    with stack.api(key=None) as api:
        bearer = api.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        query_key = api.get("/metrics", headers={"Authorization": f"Bearer {QUERY_KEY}"})
        nothing = api.get("/metrics")
    assert bearer.status_code == 200 and "ragcore_queue_depth" in bearer.text
    assert query_key.status_code == 403 and nothing.status_code == 401
