"""What the shipped manifests hold: no API key that works, Flower behind its login, sentinels that
ragcore accepts."""

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from api.auth import scope_of
from deploy.monitoring import prometheus_rule
from ragcore.settings import ApiScope, ApiSettings, RedisSettings, Settings

DEPLOY = Path(__file__).parent
#: Where a probe runs Python that reads the settings: each image's HEALTHCHECK, the k8s probes.
PROBE_FILES = [
    DEPLOY.parent / "api/Dockerfile",
    DEPLOY.parent / "services/beat/Dockerfile",
    DEPLOY.parent / "services/worker.Dockerfile",
    *sorted((DEPLOY / "k8s").glob("*.yaml")),
]


def _shipped_key_sets() -> dict[str, dict[str, ApiScope]]:
    secret = re.search(r"RAGCORE_API_KEYS: '(.*)'", (DEPLOY / "k8s/secret.yaml").read_text())
    example = re.search(
        r"^RAGCORE_API_KEYS=(.*)$", (DEPLOY / "compose/example.env").read_text(), re.MULTILINE
    )
    assert secret and example
    return {"k8s/secret.yaml": json.loads(secret[1]), "compose/example.env": json.loads(example[1])}


@pytest.mark.parametrize("where", ["k8s/secret.yaml", "compose/example.env"])
def test_no_shipped_key_entry_admits_a_key_or_starts_prod(where: str) -> None:
    keys = _shipped_key_sets()[where]
    for entry in keys:
        # The obvious guesses: the entry's own text, and what follows "sha256:".
        assert scope_of(entry, keys) is None, entry
        assert scope_of(entry.removeprefix("sha256:"), keys) is None, entry
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(environment="prod", api=ApiSettings(keys=keys))


def test_compose_flower_cannot_start_without_basic_auth() -> None:
    compose = (DEPLOY / "compose/docker-compose.yml").read_text()
    flower = compose[compose.index("\n  flower:") :]
    assert re.search(r"FLOWER_BASIC_AUTH: \$\{FLOWER_BASIC_AUTH:\?", flower)


def test_the_prometheus_rule_is_alerts_yaml_as_made_by_its_generator() -> None:
    shipped = (DEPLOY / "k8s/prometheus-rule.yaml").read_text()
    assert shipped == prometheus_rule.render(
        (DEPLOY / "monitoring/alerts.yaml").read_text()
    ), "regenerate: python -m deploy.monitoring.prometheus_rule > deploy/k8s/prometheus-rule.yaml"


def test_the_service_monitor_scrapes_the_api_services_metrics_with_a_bearer_key() -> None:
    docs = [
        d
        for name in ("api.yaml", "monitoring.yaml")
        for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text())
    ]
    [service] = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ragcore-api"
    ]
    [monitor] = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["authorization"]["type"] == "Bearer"
    secret = endpoint["authorization"]["credentials"]
    assert any(
        d["kind"] == "Secret"
        and d["metadata"]["name"] == secret["name"]
        and secret["key"] in d["stringData"]
        for d in docs
    )


def test_the_sentinel_overlays_name_sentinels_ragcore_accepts() -> None:
    # Read as text (PyYAML is no dependency of ours); check_manifests.py checks their structure.
    overlay = (DEPLOY / "k8s-sentinel/kustomization.yaml").read_text()
    compose = (DEPLOY / "compose/sentinel.yml").read_text()
    k8s = re.search(r"RAGCORE_REDIS_SENTINELS\n\s+value: (\S+)", overlay)
    local = re.search(r"RAGCORE_REDIS_SENTINELS: (\S+)", compose)
    assert k8s and local
    for sentinels in (k8s[1], local[1]):
        settings = RedisSettings(sentinels=sentinels, sentinel_master="ragcore")
        assert settings.broker.count("sentinel://") == len(settings.sentinel_nodes) == 3


def test_every_probe_reads_settings_that_exist() -> None:
    # A probe's `python -c` is a string no type checker reads: when the settings were grouped,
    # `get_settings().broker` and `.api_port` left Beat's and the API's HEALTHCHECK failing.
    paths = [
        (probe.name, path)
        for probe in PROBE_FILES
        for path in re.findall(r"get_settings\(\)((?:\.\w+)+)", probe.read_text())
    ]
    assert {name for name, _ in paths} >= {"Dockerfile", "beat.yaml"}
    settings = Settings()
    for name, path in paths:
        value: object = settings
        for attribute in path.strip(".").split("."):
            assert hasattr(value, attribute), f"{name}: get_settings(){path} does not exist"
            value = getattr(value, attribute)
