"""What the shipped manifests hold: no API key that works, Flower behind its login, and Sentinel
overlays that point ragcore and KEDA at the same sentinels."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from api.auth import scope_of
from ragcore.settings import ApiScope, Settings

DEPLOY = Path(__file__).parent


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
        Settings(environment="prod", api_keys=keys)


def test_compose_flower_cannot_start_without_basic_auth() -> None:
    compose = (DEPLOY / "compose/docker-compose.yml").read_text()
    flower = compose[compose.index("\n  flower:") :]
    assert re.search(r"FLOWER_BASIC_AUTH: \$\{FLOWER_BASIC_AUTH:\?", flower)


def _patched(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """`document` after kustomize's JSON 6902 `operations` (add, replace, remove)."""
    for operation in operations:
        *parents, last = operation["path"].strip("/").split("/")
        node: Any = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if operation["op"] == "remove":
            del node[last]
        else:
            node[int(last) if isinstance(node, list) else last] = operation["value"]
    return document


def test_the_kubernetes_sentinel_overlay_gives_ragcore_and_every_keda_trigger_the_sentinels() -> (
    None
):
    overlay = yaml.safe_load((DEPLOY / "k8s-sentinel/kustomization.yaml").read_text())
    patches = {p["target"]["kind"]: yaml.safe_load(p["patch"]) for p in overlay["patches"]}
    config = yaml.safe_load((DEPLOY / "k8s/config.yaml").read_text())
    env = _patched(config, patches["ConfigMap"])["data"]
    settings = Settings(
        redis_url=env["RAGCORE_REDIS_URL"],
        redis_sentinels=env["RAGCORE_REDIS_SENTINELS"],
        redis_sentinel_master=env["RAGCORE_REDIS_SENTINEL_MASTER"],
    )
    assert settings.broker.count("sentinel://") == 3 and settings.redis_sentinel_master == "ragcore"
    for scaled in yaml.safe_load_all((DEPLOY / "k8s/keda.yaml").read_text()):
        triggers = _patched(scaled, patches["ScaledObject"])["spec"]["triggers"]
        for trigger in triggers:
            metadata = trigger["metadata"]
            assert trigger["type"] == "redis-sentinel" and "addressFromEnv" not in metadata
            assert {env[metadata["addressesFromEnv"]], env[metadata["sentinelMasterFromEnv"]]} == {
                settings.redis_sentinels,
                settings.redis_sentinel_master,
            }


def test_the_compose_sentinel_override_reaches_every_service_that_reads_the_settings() -> None:
    base = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())["services"]
    override = yaml.safe_load((DEPLOY / "compose/sentinel.yml").read_text())["services"]
    readers = {name for name, s in base.items() if "RAGCORE_REDIS_URL" in s.get("environment", {})}
    given = {
        name
        for name, s in override.items()
        if "RAGCORE_REDIS_SENTINELS" in s.get("environment", {})
    }
    assert readers and given == readers
    env = override["api"]["environment"]
    settings = Settings(
        redis_sentinels=env["RAGCORE_REDIS_SENTINELS"],
        redis_sentinel_master=env["RAGCORE_REDIS_SENTINEL_MASTER"],
    )
    sentinels = {name for name in override if name.startswith("sentinel-")}
    assert {host for host, _ in settings.sentinel_nodes} == sentinels
