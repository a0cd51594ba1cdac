"""The alert rules are valid Prometheus rules, each says what to do (a runbook), and each fires on
the series its unit test gives it and stays quiet just before (`promtool test rules`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from ragcore_dev.tools import debian_tool

HERE = Path(__file__).parent


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [debian_tool("promtool", "prometheus"), *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_on_its_sample_series_as_its_unit_test_expects() -> None:
    tested = promtool("test", "rules", "alerts_test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_summary_a_runbook_a_severity_and_a_unit_test() -> None:
    rules = [
        r for g in yaml.safe_load((HERE / "alerts.yaml").read_text())["groups"] for r in g["rules"]
    ]
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    fired = {
        check["alertname"]
        for test in tests
        for check in test["alert_rule_test"]
        if check["exp_alerts"]
    }
    for rule in rules:
        assert {"summary", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert len(rule["annotations"]["runbook"]) > 80, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["alert"] in fired, f"{rule['alert']} has no unit test that makes it fire"
