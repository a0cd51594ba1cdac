"""What the deployment files promise, checked: one worker service per queue, scaling, KEDA, Beat.

Usage: check_manifests.py COMPOSE_CONFIG_YAML K8S_DIR VERSION

COMPOSE_CONFIG_YAML is `docker-compose config` output (anchors and variables resolved). Needs
PyYAML. Kubernetes' own schemas are checked by kubernetes-validate; this checks what no schema
knows, including the KEDA ScaledObjects and the Prometheus Operator's ServiceMonitor and
PrometheusRule (CRDs that kubernetes-validate has no schema for).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

QUEUES = ("sync", "notifications", "cleanup", "user")
IMAGES = ("api", "beat", *(f"worker-{q}" for q in QUEUES))
HEALTHCHECK = ["/opt/app/pex", "--healthcheck"]

problems: list[str] = []
#: Each worker's stop_grace_period in compose, in seconds: Kubernetes' grace period must be the
#: same.
COMPOSE_GRACE: dict[str, int] = {}


def expect(ok: bool, what: str) -> None:
    if not ok:
        problems.append(what)


def check_compose(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("redis", "postgres", "qdrant", "migrate", "api", "beat", "flower"):
        expect(name in services, f"compose: no service {name!r}")
    redis = " ".join(services["redis"].get("command", []))
    expect("--appendonly yes" in redis, "compose: redis without --appendonly yes")
    expect("--maxmemory-policy noeviction" in redis, "compose: redis may evict (maxmemory-policy)")
    expect(
        services["qdrant"]["image"].startswith("qdrant/qdrant:"),
        "compose: qdrant is not the real image",
    )
    migrate = services["migrate"]
    expect(
        migrate.get("entrypoint") == ["/opt/migrate/pex"],
        "compose: migrate does not run /opt/migrate/pex",
    )
    expect(
        migrate.get("command") == ["upgrade", "head"], "compose: migrate does not upgrade to head"
    )
    expect(
        any(p.get("target") == 7001 for p in _ports(services["api"])),
        "compose: the API does not publish port 7001",
    )
    flower = services["flower"]
    expect(
        flower.get("entrypoint") == ["/opt/flower/pex"],
        "compose: flower does not run /opt/flower/pex",
    )
    expect(
        bool(flower.get("environment", {}).get("FLOWER_BASIC_AUTH")),
        "compose: flower without basic auth",
    )
    expect(
        any(p.get("target") == 5555 for p in _ports(flower)),
        "compose: flower does not publish port 5555",
    )
    for q in QUEUES:
        s = services.get(f"worker-{q}")
        if s is None:
            problems.append(f"compose: no service worker-{q}")
            continue
        expect(
            s["image"].startswith(f"ragcore/worker-{q}:"), f"compose: worker-{q} runs {s['image']}"
        )
        expect(
            s.get("restart") == "unless-stopped",
            f"compose: worker-{q} restart is not unless-stopped",
        )
        expect(
            s.get("healthcheck", {}).get("test", [])[1:] == HEALTHCHECK,
            f"compose: worker-{q} health check",
        )
        concurrency = json.loads(s.get("environment", {}).get("RAGCORE_WORKER_CONCURRENCY", "{}"))
        expect(
            set(concurrency) == {q},
            f"compose: worker-{q} concurrency is not its own: {concurrency}",
        )
        # `--scale` clones the service: a fixed name or a published port would collide.
        expect(
            "container_name" not in s and not s.get("ports"),
            f"compose: worker-{q} cannot be scaled",
        )
        expect(
            s.get("depends_on", {}).get("migrate", {}).get("condition")
            == "service_completed_successfully",
            f"compose: worker-{q} does not wait for the migration",
        )
        COMPOSE_GRACE[q] = _seconds(str(s.get("stop_grace_period", "10s")))
    expect(
        not services["beat"].get("deploy", {}).get("replicas", 1) > 1, "compose: more than one beat"
    )


def _seconds(duration: str) -> int:
    """A compose duration ("5m", "5m0s", "90s", "1h") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0, ""
    for ch in duration:
        if ch.isdigit():
            number += ch
        else:
            total, number = total + int(number or 0) * units[ch], ""
    return total + int(number or 0)


def _ports(service: dict[str, Any]) -> list[Any]:
    """Ports in compose's long form; a short "HOST:CONTAINER" string becomes its target."""
    return [
        p if isinstance(p, dict) else {"target": int(str(p).rsplit(":", 1)[-1])}
        for p in service.get("ports", [])
    ]


def check_k8s(directory: Path, version: str) -> None:
    docs = [
        d for f in sorted(directory.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d.get("metadata", {}).get("name", "")] = d
    kustomization = by_kind["Kustomization"][""]
    listed = set(kustomization["resources"])
    on_disk = {f.name for f in directory.glob("*.yaml")} - {"kustomization.yaml"}
    expect(
        listed == on_disk,
        f"k8s: kustomization resources {sorted(listed)} != files {sorted(on_disk)}",
    )
    tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
    expect(
        tags == {f"ragcore/{i}": version for i in IMAGES},
        f"k8s: image tags {tags} are not VERSION {version}",
    )
    deployments = by_kind.get("Deployment", {})
    for q in QUEUES:
        d = deployments.get(f"ragcore-worker-{q}")
        if d is None:
            problems.append(f"k8s: no Deployment ragcore-worker-{q}")
            continue
        (c,) = d["spec"]["template"]["spec"]["containers"]
        expect(c["image"] == f"ragcore/worker-{q}", f"k8s: worker-{q} runs {c['image']}")
        for probe in ("livenessProbe", "readinessProbe"):
            expect(
                c.get(probe, {}).get("exec", {}).get("command") == HEALTHCHECK,
                f"k8s: worker-{q} {probe}",
            )
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        expect(
            set(json.loads(env.get("RAGCORE_WORKER_CONCURRENCY", "{}"))) == {q},
            f"k8s: worker-{q} concurrency",
        )
        expect(
            {"configMapRef", "secretRef"} <= {k for ref in c.get("envFrom", []) for k in ref},
            f"k8s: worker-{q} does not read the ConfigMap and the Secret",
        )
        so = by_kind.get("ScaledObject", {}).get(f"ragcore-worker-{q}")
        if so is None:
            problems.append(f"k8s: no ScaledObject for queue {q}")
            continue
        expect(so["apiVersion"] == "keda.sh/v1alpha1", f"k8s: ScaledObject {q} apiVersion")
        expect(
            so["spec"]["scaleTargetRef"]["name"] == f"ragcore-worker-{q}",
            f"k8s: ScaledObject {q} target",
        )
        # Waiting and in-flight work (ragcore.broker.in_flight.IN_FLIGHT_KEY): a pod busy with an
        # empty list is not idle.
        triggers = so["spec"]["triggers"]
        lists = sorted(t["metadata"].get("listName", "") for t in triggers if t["type"] == "redis")
        expect(
            lists == sorted([q, f"ragcore:inflight:{q}"]) and len(triggers) == 2,
            f"k8s: ScaledObject {q} must scale on lists {q} and ragcore:inflight:{q}, "
            f"not {triggers}",
        )
        for trigger in triggers:
            expect(
                str(trigger["metadata"].get("listLength", "")).isdigit(),
                f"k8s: ScaledObject {q} listLength must be a number string",
            )
        grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds")
        expect(
            grace is not None and grace == COMPOSE_GRACE.get(q),
            f"k8s: worker-{q} grace period {grace}s differs from compose's stop_grace_period "
            f"{COMPOSE_GRACE.get(q)}s",
        )
        expect(
            1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"],
            f"k8s: ScaledObject {q} bounds",
        )
    beat = deployments.get("ragcore-beat", {}).get("spec", {})
    expect(
        beat.get("replicas") == 1 and beat.get("strategy", {}).get("type") == "Recreate",
        "k8s: beat must be one replica with strategy Recreate",
    )
    expect(
        "ragcore-api" in deployments and "ragcore-api" in by_kind.get("Service", {}),
        "k8s: API Deployment/Service",
    )
    job = by_kind.get("Job", {}).get("ragcore-migrate")
    expect(
        job is not None
        and job["spec"]["template"]["spec"]["containers"][0]["command"] == ["/opt/migrate/pex"],
        "k8s: no migration Job running /opt/migrate/pex",
    )
    expect(
        "ragcore-config" in by_kind.get("ConfigMap", {})
        and "ragcore-secrets" in by_kind.get("Secret", {}),
        "k8s: ConfigMap ragcore-config and Secret ragcore-secrets",
    )
    # One source for the alert rules: deploy/monitoring/alerts.yaml (promtool-tested).
    rule = by_kind.get("PrometheusRule", {}).get("ragcore")
    alerts = yaml.safe_load((directory.parent / "monitoring/alerts.yaml").read_text())
    expect(
        rule is not None and rule["spec"]["groups"] == alerts["groups"],
        "k8s: PrometheusRule ragcore differs from deploy/monitoring/alerts.yaml (regenerate it)",
    )
    monitor = by_kind.get("ServiceMonitor", {}).get("ragcore-api")
    expect(
        monitor is not None
        and monitor["spec"]["selector"]["matchLabels"]
        == by_kind.get("Service", {}).get("ragcore-api", {}).get("metadata", {}).get("labels"),
        "k8s: no ServiceMonitor ragcore-api selecting the API Service",
    )


def main() -> None:
    compose_config, k8s_dir, version = sys.argv[1:4]
    check_compose(yaml.safe_load(Path(compose_config).read_text()))
    check_k8s(Path(k8s_dir), version)
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        sys.exit(1)
    print("compose and Kubernetes manifests: every promise holds")


if __name__ == "__main__":
    main()
