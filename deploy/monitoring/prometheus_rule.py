"""The PrometheusRule (Prometheus Operator) that ships alerts.yaml to Kubernetes, made from it.

    python -m deploy.monitoring.prometheus_rule > deploy/k8s/prometheus-rule.yaml

alerts.yaml is the one source (promtool checks and tests it); deploy/manifests_test.py fails when
the manifest is not what this makes of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ALERTS = Path(__file__).with_name("alerts.yaml")
HEADER = (
    "# Made from deploy/monitoring/alerts.yaml by python -m deploy.monitoring.prometheus_rule:\n"
    "# edit that file, then regenerate this one (deploy/manifests_test.py checks they agree).\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, as alerts.yaml writes them."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def rule(alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "ragcore",
            "labels": {
                "app.kubernetes.io/name": "ragcore",
                "app.kubernetes.io/component": "alerts",
            },
        },
        "spec": {"groups": alerts["groups"]},
    }


def render(alerts_text: str) -> str:
    return HEADER + yaml.dump(
        rule(yaml.safe_load(alerts_text)), Dumper=_Dumper, sort_keys=False, width=100
    )


def main() -> None:
    print(render(ALERTS.read_text()), end="")


if __name__ == "__main__":
    main()
