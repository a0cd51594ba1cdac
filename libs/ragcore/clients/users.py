"""Client of the Users system's reporting endpoints (SPEC §5); every call is idempotent by key."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import httpx
import orjson

QUERY_RESULTS_PATH = "/api/v1/rag/query-results"
USAGE_STATISTICS_PATH = "/api/v1/rag/usage-statistics"
NOTIFICATIONS_PATH = "/api/v1/rag/notifications"


def _key_part(value: Any) -> str:
    # A datetime must give the same key on every retry, whatever str() would print for it.
    return value.isoformat() if isinstance(value, datetime) else str(value)


def content_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of the payload as canonical JSON (sorted keys): equal content, equal digest."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def usage_key(payload: dict[str, Any], revision: int = 0) -> str:
    """SPEC §5's key, the period (`<period_start>/<period_end>`), for the numbers first sent for
    it; a recomputation whose numbers differ is revision n = 1, 2, ... under
    `<period_start>/<period_end>/r<n>`, so a 409 keeps meaning "these numbers, already
    delivered"."""
    period = f"{_key_part(payload['period_start'])}/{_key_part(payload['period_end'])}"
    return f"{period}/r{revision}" if revision else period


class UsersClient:
    """Posts reports to Users over a caller-owned httpx client."""

    def __init__(self, client: httpx.Client, base_url: str, token: str | None = None) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def _post(self, path: str, payload: dict[str, Any], idempotency_key: str) -> int:
        """POST and return the status; 409 means Users already has this key, which is success
        too."""
        if not idempotency_key:
            raise ValueError("an Idempotency-Key is required")
        headers = {**self._headers, "Idempotency-Key": idempotency_key}
        # orjson also writes datetimes as RFC 3339, which the contract asks for.
        response = self._client.post(
            self._base + path, content=orjson.dumps(payload), headers=headers
        )
        if response.status_code != 409:
            response.raise_for_status()
        return response.status_code

    def send_query_result(self, payload: dict[str, Any]) -> int:
        """Report one answered query; the message id is the key."""
        return self._post(QUERY_RESULTS_PATH, payload, _key_part(payload["message_id"]))

    def send_usage_statistics(self, payload: dict[str, Any], revision: int = 0) -> int:
        """Report one period's usage under `usage_key`."""
        return self._post(USAGE_STATISTICS_PATH, payload, usage_key(payload, revision))

    def send_notification(self, payload: dict[str, Any], idempotency_key: str) -> int:
        """Send a system notification under a key chosen by the sender."""
        return self._post(NOTIFICATIONS_PATH, payload, idempotency_key)
