"""A query's two reports: the message row is the intent, a relay outside the API publishes them.

The answer's transaction stores the message with `reported_at` NULL and nothing more, so a report
exists exactly when its message does and recording it costs the answer nothing. The relay (a thread
of the Beat process, off the API's cores) polls for unreported messages, records their tasks in the
ledger, publishes `send_query_result_to_users` and `update_user_statistics` for each, then marks
them reported. A broker outage leaves them unreported until it returns.

Task ids derive from the message ids: a publish repeated after a crash between publishing and
marking (or by a second relay: two Beats) is the same task again, and both consumers count a
message once (Users by its idempotency key, the statistics by message).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import Row, func, select, update
from sqlalchemy.orm import Session

from ragcore import tracing
from ragcore.background import PeriodicThread
from ragcore.db import Sessions, session_scope, utcnow
from ragcore.db.models import Message
from ragcore.tasks import contracts, ledger
from ragcore.tasks.contracts import TaskContract

log = logging.getLogger(__name__)

_TASK_IDS = uuid.UUID("6f1d3c2e-8a41-4c55-9b0e-2d7f0a9c5e11")
_COLUMNS = (
    Message.id,
    Message.user_id,
    Message.conversation_id,
    Message.query,
    Message.answer,
    Message.sources,
    Message.tokens_used,
    Message.processing_time_ms,
    Message.traceparent,
)


@dataclass(frozen=True)
class Report:
    task_id: str
    contract: TaskContract
    kwargs: dict[str, Any]
    message_id: str
    #: The query's span context (tracing on): the report's publish and task continue its trace.
    traceparent: str | None = None

    @property
    def shown(self) -> str:
        """The arguments as the message's `kwargsrepr` shows them (Flower, the workers' events):
        the ids, not the answer. Celery's default repr of the whole arguments (a kilobyte: the
        query, the answer, the sources) went into every message's headers and task-received
        event, and Flower parsed it back (`ast.literal_eval`) on each of a task's three events."""
        return repr({k: v for k, v in self.kwargs.items() if k in _SHOWN})


#: The arguments a report's `kwargsrepr` keeps: what names the query it reports.
_SHOWN = ("user_id", "conversation_id", "message_id")


def _task_id(contract: TaskContract, message_id: str) -> str:
    return str(uuid.uuid5(_TASK_IDS, f"{contract.name}:{message_id}"))


def _reports(rows: list[Row[Any]]) -> list[Report]:
    """Both reports of each message (SPEC §2: each is sent after every query), results first."""
    results, statistics = [], []
    for m in rows:
        fields = {
            "user_id": m.user_id,
            "conversation_id": m.conversation_id,
            "message_id": m.id,
            "query": m.query,
            "answer": m.answer,
            "sources": m.sources,
            "tokens_used": m.tokens_used,
            "processing_time_ms": m.processing_time_ms,
        }
        results.append(
            Report(
                _task_id(contracts.SEND_QUERY_RESULT, m.id),
                contracts.SEND_QUERY_RESULT,
                fields,
                m.id,
                m.traceparent,
            )
        )
        stats = contracts.UPDATE_USER_STATISTICS
        statistics.append(
            Report(_task_id(stats, m.id), stats, {"user_id": m.user_id}, m.id, m.traceparent)
        )
    return results + statistics


def publish_pending(app: Celery, limit: int = 500, sessions: Sessions = session_scope) -> int:
    """Publish the reports of up to `limit` unreported messages, oldest first; returns how many
    messages."""
    with sessions() as session:
        rows = list(
            session.execute(
                select(*_COLUMNS)
                .where(Message.reported_at.is_(None))
                .order_by(Message.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        if not rows:
            return 0
        reports = _reports(rows)
        # Committed before publishing: a worker that starts the task finds its ledger row.
        ledger.record_sent_many(session, [(r.task_id, r.contract, r.kwargs) for r in reports])
    with tracing.span("report_relay.publish", messages=len(rows)):
        unpublished = _publish(app, reports)
    done = [m.id for m in rows if m.id not in unpublished]
    if done:
        with sessions() as session:
            session.execute(
                update(Message)
                .where(Message.id.in_(done))
                .values(reported_at=utcnow())
                .execution_options(synchronize_session=False)
            )
    return len(done)


def _publish(app: Celery, reports: list[Report]) -> set[str]:
    """Publish `reports` on one connection; returns the messages whose reports wait for the next
    round (the broker is down)."""
    batch = tracing.current_traceparent()
    try:
        with app.producer_or_acquire() as producer:  # one connection for the batch
            for i, report in enumerate(reports):
                # In the query's trace, not the round's (which it links to): the trace of a query
                # shows its reports, however late and in whichever batch they went out.
                with tracing.span(
                    "report.publish",
                    parent=report.traceparent,
                    links=(batch,),
                    task=report.contract.name,
                ):
                    try:
                        app.send_task(
                            report.contract.name,
                            kwargs=report.kwargs,
                            queue=report.contract.queue.value,
                            task_id=report.task_id,
                            headers=_headers(report),
                            kwargsrepr=report.shown,
                            producer=producer,
                        )
                    # the broker is down: these messages wait for the next round
                    except Exception as exc:
                        log.warning("report publish failed, will retry: %s", exc)
                        return {r.message_id for r in reports[i:]}
    except Exception as exc:  # no connection at all
        log.warning("report relay cannot reach the broker, will retry: %s", exc)
        return {r.message_id for r in reports}
    return set()


def _headers(report: Report) -> dict[str, Any]:
    headers: dict[str, Any] = {ledger.RECORDED_HEADER: True}
    if report.traceparent:  # the task's span links to the query's
        headers[tracing.LINK_HEADER] = report.traceparent
    return headers


def backlog(session: Session) -> tuple[int, datetime | None]:
    """How many messages wait for their reports, and since when (the relay or the broker is
    down)."""
    count, oldest = session.execute(
        select(func.count(), func.min(Message.created_at)).where(Message.reported_at.is_(None))
    ).one()
    return int(count), oldest


class ReportRelay(PeriodicThread):
    """Beat's `report-relay` thread: every `interval` seconds, publishes pending reports in batches
    until none is left."""

    def __init__(self, app: Celery, interval: float) -> None:
        super().__init__("report-relay", interval, self._round, counted="messages_reported")
        self._app = app

    def _round(self) -> int:
        published = 0
        while (n := publish_pending(self._app)) and not self.stopping:
            published += n
        return published
