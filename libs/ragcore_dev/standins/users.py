"""The Users stand-in: SPEC §5's reporting endpoints, recording each delivery once per
Idempotency-Key.

A first delivery of a key answers 201 and is recorded; a repeat answers 409 and is only counted.

    python -m ragcore_dev.standins.users --port 7102 [--token T]

Control API (no auth, no faults): GET
/_control/deliveries?kind=query-results|usage-statistics|notifications, POST /_control/reset, and
the shared /_control/faults and /_control/requests of ragcore_dev.standins.server (an outage: POST
/_control/faults {"outage_seconds": 60, "status": 503} refuses everything for a minute).
"""

from __future__ import annotations

import argparse
import threading
from datetime import UTC, datetime
from typing import Any

from ragcore_dev.standins.server import (
    App,
    HTTPError,
    Request,
    Response,
    Running,
    json_response,
    run_until_signalled,
    start_in_thread,
)

#: kind (the last path segment) -> fields the body must carry.
REQUIRED_FIELDS = {
    "query-results": (
        "user_id",
        "conversation_id",
        "message_id",
        "query",
        "answer",
        "sources",
        "tokens_used",
        "processing_time_ms",
    ),
    "usage-statistics": ("period_start", "period_end", "users"),
    "notifications": ("notification_type", "title", "message", "user_ids", "metadata"),
}


class UsersApp(App):
    name = "users"

    def __init__(self, token: str | None = None) -> None:
        super().__init__(token)
        self._lock = threading.Lock()
        self._deliveries: list[dict[str, Any]] = []
        self._keys: set[tuple[str, str]] = set()
        self.duplicates: dict[str, int] = {kind: 0 for kind in REQUIRED_FIELDS}
        self._counts: dict[str, int] = {kind: 0 for kind in REQUIRED_FIELDS}
        for kind in REQUIRED_FIELDS:
            self.route("POST", f"/api/v1/rag/{kind}", self.receive)
        self.route("GET", "/_control/deliveries", self.control_deliveries)
        self.route("POST", "/_control/reset", self.control_reset)

    def receive(self, request: Request) -> Response:
        kind = request.path.rsplit("/", 1)[-1]
        key = request.headers.get("Idempotency-Key")
        if not key:
            raise HTTPError(400, "Idempotency-Key header is required")
        payload = request.json()
        if not isinstance(payload, dict):
            raise HTTPError(422, "body must be a JSON object")
        missing = [f for f in REQUIRED_FIELDS[kind] if f not in payload]
        if missing:
            raise HTTPError(422, f"missing fields: {missing}")
        with self._lock:
            if (kind, key) in self._keys:
                self.duplicates[kind] += 1
                return json_response({"error": "duplicate", "idempotency_key": key}, 409)
            self._keys.add((kind, key))
            delivery = {
                "id": len(self._deliveries) + 1,
                "kind": kind,
                "idempotency_key": key,
                "payload": payload,
                "received_at": datetime.now(UTC).isoformat(),
            }
            self._deliveries.append(delivery)
            self._counts[kind] += 1
        return json_response({"id": delivery["id"], "status": "recorded"}, 201)

    def deliveries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Recorded deliveries, oldest first, optionally of one kind."""
        with self._lock:
            return [d for d in self._deliveries if kind is None or d["kind"] == kind]

    def count(self, kind: str) -> int:
        """How many deliveries of `kind` were recorded (cheap enough to poll while they arrive)."""
        return self._counts[kind]

    def reset(self) -> None:
        """Forget deliveries and keys; clear faults and the request log."""
        with self._lock:
            self._deliveries.clear()
            self._keys.clear()
            self.duplicates = {kind: 0 for kind in REQUIRED_FIELDS}
            self._counts = {kind: 0 for kind in REQUIRED_FIELDS}
        self.faults.clear()
        self.log.clear()

    def control_deliveries(self, request: Request) -> Response:
        kind = request.query.get("kind")
        if kind is not None and kind not in REQUIRED_FIELDS:
            raise HTTPError(400, f"kind must be one of {sorted(REQUIRED_FIELDS)}")
        return json_response({"deliveries": self.deliveries(kind), "duplicates": self.duplicates})

    def control_reset(self, _: Request) -> Response:
        self.reset()
        return json_response({"ok": True})


def start_users(token: str | None = None, port: int = 0) -> Running[UsersApp]:
    """Serve on 127.0.0.1 in a background thread; `.url`, `.app.deliveries()`, `.app.faults`,
    `.stop()`."""
    return start_in_thread(UsersApp(token), port=port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7102)
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args()
    run_until_signalled(UsersApp(args.token), args.host, args.port)


if __name__ == "__main__":
    main()
