"""Re-queue, when a worker's consumer reconnects, the tasks it held when its connection broke.

On a connection loss kombu hands the worker's unacknowledged messages back at once, through the
connection that just broke. After a failover that attempt meets the dead primary (the sentinels
still name it for a second or two) and fails, while the promoted replica keeps the messages in its
`unacked` hash: Redis would redeliver them only after the visibility timeout (hours), and the
ledger's reconciler leaves alone what `unacked` holds. Celery itself drops the requests it had
reserved (their delivery tags died with the channel). So the worker remembers the requests it
received and has not acknowledged, and once its consumer runs again it moves back to their queue,
by delivery tag, the messages that kombu failed to hand back and that it no longer runs. What kombu
did hand back is left alone: another worker may hold it by now.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps, signals
from celery.worker import state as worker_state
from celery.worker.request import Request

from ragcore.broker import held as broker_held

log = logging.getLogger(__name__)


class HeldRequests:
    """The requests this worker received and has not acknowledged (nor rejected) yet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, Request] = {}

    def received(self, request: Request) -> None:
        with self._lock:
            # Pruned at each receipt, the map stays about the size of the prefetch.
            for task_id in [i for i, r in self._requests.items() if r.acknowledged]:
                del self._requests[task_id]
            self._requests[request.id] = request

    def dropped(self) -> dict[str, str]:
        """Task id -> delivery tag of the requests held and no longer running that kombu did not
        hand back: Celery forgot them when the connection broke, and they wait in `unacked`."""
        running = {request.id for request in list(worker_state.active_requests)}
        with self._lock:
            return {
                task_id: request.message.delivery_tag
                for task_id, request in self._requests.items()
                if not request.acknowledged and task_id not in running and _not_handed_back(request)
            }

    def forget(self, task_ids: set[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._requests.pop(task_id, None)


def _not_handed_back(request: Request) -> bool:
    # kombu's Redis QoS forgets its delivered tags only once it handed them all back; after a
    # failed hand-back the broken channel's QoS still lists them.
    qos = getattr(request.message.channel, "qos", None)
    return request.message.delivery_tag in (getattr(qos, "_delivered", None) or {})


def connect(app: Celery) -> None:
    """Track the requests of `app`'s worker and re-queue the dropped ones at each reconnect."""
    held = HeldRequests()

    @signals.task_received.connect(weak=False, dispatch_uid="reconnect.held")
    def _received(request: Request, **_: Any) -> None:
        held.received(request)

    class RequeueOnReconnect(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped here
        """Runs at every start of the consumer, once its connection and task consumer are up."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            # The first start is this worker's first connection (recovery handles a previous life).
            if c.restart_count < 1:
                return
            dropped = held.dropped()
            if not dropped:
                return
            try:
                with c.app.connection_for_write() as conn:
                    channel = conn.default_channel
                    for task_id, tag in dropped.items():
                        # from `unacked` to its queue, if `unacked` still has it, marked waiting
                        # (else a reconciler would find it nowhere and publish it again)
                        broker_held.move_back(channel, tag, task_id)
            except Exception:  # best effort: the reconciler and the visibility timeout remain
                log.exception("re-queueing the tasks held before the connection loss failed")
                return
            held.forget(set(dropped))
            log.warning(
                "broker connection re-established: handed back %d task(s) held when it broke that "
                "kombu could not hand back (those the broker still held are queued again): %s",
                len(dropped),
                sorted(dropped),
            )

    app.steps["consumer"].add(RequeueOnReconnect)
