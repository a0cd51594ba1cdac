"""GET /metrics: Prometheus text for autoscalers (KEDA), alerts and dashboards (deploy/monitoring).

Queues (depth, oldest waiting task, consumers, tasks held, lost workers, heartbeat age) come from
the broker; the reports still to publish from the messages; deliveries waiting for a re-drive and
failed for good from failed_deliveries, each neighbour's circuit breaker from its state in Redis;
the last retention run and each sync task's last success from the ledger; dead letters by queue
and reason from dead_letters; this API process's queries (outcome, latency) and responses (status
class) from its own counters (api.request_metrics); task counts and durations from the ledger,
over the tasks sent within `metrics_window_seconds` — so they are gauges (and a gauge histogram):
`histogram_quantile(0.95, ragcore_task_duration_seconds_bucket)` is the p95 of that window.

Access: an admin key (X-API-Key, or a bearer token), unless `metrics_public` is set for scrapers
that can send neither (then keep the port private to the cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, HTTPException, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from api import request_metrics
from api.auth import require
from api.deps import SessionDep, SettingsDep
from api.errors import BROKER_UNREACHABLE, ERROR_RESPONSES, UnavailableBody
from ragcore import deadletters, deliveries
from ragcore.broker import broker_client, depths, heartbeats
from ragcore.clients.breaker import CLOSED, HALF_OPEN, OPEN, breaker
from ragcore.query import reports
from ragcore.settings import Settings
from ragcore.tasks import contracts, ledger, reconcile
from ragcore.tasks.contracts import APPLY_RETENTION

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the task duration buckets: sub-second notifications to hour-long syncs.
DURATION_BOUNDS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)

_key = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)
_admin = require("admin")


def metrics_access(
    settings: SettingsDep,
    key: Annotated[str | None, Security(_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Admin key required unless metrics are public: as X-API-Key, or as a bearer token, which is
    what a Prometheus Operator ServiceMonitor can send (deploy/k8s/monitoring.yaml)."""
    if not settings.api.metrics_public:
        _admin(settings, key or (bearer.credentials if bearer else None))


router = APIRouter(
    tags=["metrics"], responses={k: v for k, v in ERROR_RESPONSES.items() if k != 422}
)


class _Snapshot(Collector):
    """The metric families computed for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _queue_families(stats: Iterable[depths.QueueStats]) -> list[Metric]:
    depth = GaugeMetricFamily("ragcore_queue_depth", "Tasks waiting in the queue", labels=["queue"])
    age = GaugeMetricFamily(
        "ragcore_queue_oldest_task_age_seconds",
        "Age of the oldest waiting task (0 when the queue is empty)",
        labels=["queue"],
    )
    consumers = GaugeMetricFamily(
        "ragcore_queue_consumers", "Workers consuming the queue", labels=["queue"]
    )
    in_flight = GaugeMetricFamily(
        "ragcore_queue_in_flight",
        "Tasks the queue's workers hold (running or reserved)",
        labels=["queue"],
    )
    lost = GaugeMetricFamily(
        "ragcore_workers_lost",
        "Workers of the queue whose heartbeat lapsed holding tasks nobody re-queued yet",
        labels=["queue"],
    )
    heartbeat = GaugeMetricFamily(
        "ragcore_worker_heartbeat_age_seconds",
        "Age of the stalest heartbeat among the queue's consumers (0 without consumers)",
        labels=["queue"],
    )
    for s in stats:
        depth.add_metric([s.name], s.depth)
        age.add_metric([s.name], s.oldest_age_seconds or 0.0)
        consumers.add_metric([s.name], len(s.consumers))
        in_flight.add_metric([s.name], s.in_flight)
        lost.add_metric([s.name], len(s.lost))
        heartbeat.add_metric([s.name], s.stalest_heartbeat_age_seconds or 0.0)
    return [depth, age, consumers, in_flight, lost, heartbeat]


def _reconcile_families(client: redis.Redis) -> list[Metric]:
    # Kept in the broker's Redis by the reconcilers: a counter, restarting when Redis loses data.
    family = CounterMetricFamily(
        "ragcore_reconciled",
        "Tasks the broker had lost, published again from the ledger (reason lost, worker_gone) or "
        "ended (finished, contract_gone, invalid_arguments, revoked), by queue and reason",
        labels=["queue", "reason"],
    )
    for (queue, reason), count in sorted(reconcile.counts(client).items()):
        family.add_metric([queue, reason], count)
    return [family]


def _ledger_families(settings: Settings, session: Session) -> list[Metric]:
    since = datetime.now(UTC) - timedelta(seconds=settings.api.metrics_window_seconds)
    tasks = GaugeMetricFamily(
        "ragcore_tasks",
        f"Tasks sent in the last {settings.api.metrics_window_seconds}s, by name "
        "and current state (from the task ledger)",
        labels=["name", "state"],
    )
    window = ledger.window(session, since, DURATION_BOUNDS)
    for name, state, count in window.counts:
        tasks.add_metric([name, state], count)
    duration = GaugeHistogramMetricFamily(
        "ragcore_task_duration_seconds",
        f"Run time of the tasks sent in the last {settings.api.metrics_window_seconds}s "
        "that finished",
        labels=["name"],
    )
    for d in window.durations:
        buckets = [(str(bound), count) for bound, count in d.buckets] + [("+Inf", d.count)]
        duration.add_metric([d.name], buckets, gsum_value=d.total_seconds)
    return [tasks, duration]


def _report_families(session: Session) -> list[Metric]:
    count, oldest = reports.backlog(session)
    waiting = GaugeMetricFamily(
        "ragcore_reports_unreported",
        "Answered queries whose reports to Users are not published yet",
    )
    waiting.add_metric([], count)
    age = GaugeMetricFamily(
        "ragcore_reports_oldest_unreported_age_seconds",
        "How long the oldest of them has waited (0 when none): Beat's relay or the broker is down",
    )
    age.add_metric([], (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0)
    return [waiting, age]


def _delivery_families(settings: Settings, session: Session) -> list[Metric]:
    now = datetime.now(UTC)
    waiting = GaugeMetricFamily(
        "ragcore_deliveries_waiting",
        "Deliveries waiting for their automatic re-drive",
        labels=["neighbour"],
    )
    age = GaugeMetricFamily(
        "ragcore_deliveries_oldest_waiting_age_seconds",
        "How long the oldest of them has waited (0 when none)",
        labels=["neighbour"],
    )
    state = GaugeMetricFamily(
        "ragcore_circuit_breaker_state",
        "1 for the state each neighbour's circuit breaker is in",
        labels=["neighbour", "state"],
    )
    failed = GaugeMetricFamily(
        "ragcore_deliveries_failed",
        "Deliveries that failed for good and wait for an operator (re-drive or discard)",
        labels=["neighbour"],
    )
    for neighbour in contracts.neighbours():
        count, oldest = deliveries.backlog(session, neighbour)
        waiting.add_metric([neighbour], count)
        age.add_metric([neighbour], (now - oldest).total_seconds() if oldest else 0.0)
        failed.add_metric([neighbour], deliveries.failed_count(session, neighbour))
        current = breaker(neighbour, settings).state
        for name in (CLOSED, OPEN, HALF_OPEN):
            state.add_metric([neighbour, name], 1.0 if current == name else 0.0)
    return [waiting, age, state, failed]


def _retention_families(session: Session) -> list[Metric]:
    # The last run's counts, from the ledger: durable across Redis flushes and API restarts.
    deleted = GaugeMetricFamily(
        "ragcore_retention_deleted_rows",
        "Rows deleted by the last successful retention run (apply_retention), by table",
        labels=["table"],
    )
    finished = GaugeMetricFamily(
        "ragcore_retention_last_run_timestamp_seconds",
        "When the last successful retention run finished (Unix time; absent before the first)",
    )
    run = ledger.last_success(session, APPLY_RETENTION.name)
    if run is not None and run.result is not None:
        for table, count in sorted(run.result.get("deleted", {}).items()):
            deleted.add_metric([table], count)
        if run.finished_at is not None:
            finished.add_metric([], run.finished_at.timestamp())
    return [deleted, finished]


def _sync_families(session: Session) -> list[Metric]:
    # The last successful run of each sync task, from the ledger (absent before the first).
    finished = GaugeMetricFamily(
        "ragcore_sync_last_success_timestamp_seconds",
        "When the last successful run of each sync task finished (Unix time)",
        labels=["task"],
    )
    duration = GaugeMetricFamily(
        "ragcore_sync_last_duration_seconds",
        "How long the last successful run of each sync task ran",
        labels=["task"],
    )
    points = GaugeMetricFamily(
        "ragcore_sync_points", "Points in Qdrant after the last successful full sync"
    )
    for contract in (contracts.TRIGGER_FULL_SYNC, contracts.SYNC_EMBEDDINGS):
        run = ledger.last_success(session, contract.name)
        if run is None or run.finished_at is None:
            continue
        finished.add_metric([contract.name], run.finished_at.timestamp())
        if run.run_seconds is not None:
            duration.add_metric([contract.name], run.run_seconds)
        if contract is contracts.TRIGGER_FULL_SYNC and run.result and "points" in run.result:
            points.add_metric([], run.result["points"])
    return [finished, duration, points]


def _dead_letter_families(session: Session) -> list[Metric]:
    letters = GaugeMetricFamily(
        "ragcore_dead_letters",
        "Dead letters kept (poison messages taken off their queue), by queue and reason",
        labels=["queue", "reason"],
    )
    messages = GaugeMetricFamily(
        "ragcore_dead_letter_messages",
        "Poison messages those dead letters stand for (a repeated message counts each time)",
        labels=["queue", "reason"],
    )
    for t in deadletters.totals(session):
        letters.add_metric([t.queue, t.reason], t.letters)
        messages.add_metric([t.queue, t.reason], t.messages)
    return [letters, messages]


@router.get(
    "/metrics",
    dependencies=[Depends(metrics_access)],
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        503: {"model": UnavailableBody, "description": "The broker is unreachable"},
    },
)
def metrics(settings: SettingsDep, session: SessionDep) -> Response:
    """Queue and task metrics in the Prometheus text format."""
    started = time.monotonic()
    try:
        client = broker_client(settings.redis)
        stats = depths.all_queue_stats(
            client, heartbeats.heartbeat_ttl(settings.workers.heartbeat_seconds)
        )
        reconciled = _reconcile_families(client)
        # breaker states live in the broker's Redis
        delivery_families = _delivery_families(settings, session)
    except redis.RedisError as exc:
        log.warning("broker unreachable for metrics: %s", exc)
        raise HTTPException(503, BROKER_UNREACHABLE) from None
    scrape = GaugeMetricFamily(
        "ragcore_metrics_scrape_seconds", "Time taken to compute these metrics"
    )
    families = (
        _queue_families(stats)
        + reconciled
        + _ledger_families(settings, session)
        + _report_families(session)
        + delivery_families
        + _sync_families(session)
        + _retention_families(session)
        + _dead_letter_families(session)
        + list(request_metrics.REGISTRY.collect())  # this API process's queries and responses
    )
    scrape.add_metric([], time.monotonic() - started)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot([*families, scrape]))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
