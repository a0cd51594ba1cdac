"""The Grafana dashboard has a row per concern, and every panel queries something.

Whether each metric it names is one the API serves is checked against a live /metrics in
tests/integration/monitoring_test.py.
"""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARD = json.loads((Path(__file__).parent / "dashboard.json").read_text())
ROWS = ["Queries", "Queues", "Deliveries", "Sync", "Workers", "Retention"]


def test_a_row_per_concern_in_order() -> None:
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows == ROWS


def test_every_panel_queries_the_chosen_prometheus_and_ids_are_unique() -> None:
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
