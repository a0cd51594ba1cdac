"""Client of the Users system's reporting endpoints (SPEC §5); every call is idempotent by key."""

from __future__ import annotations

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

    def send_usage_statistics(self, payload: dict[str, Any]) -> int:
        """Report one period's usage; the period is the key."""
        key = f"{_key_part(payload['period_start'])}/{_key_part(payload['period_end'])}"
        return self._post(USAGE_STATISTICS_PATH, payload, key)

    def send_notification(self, payload: dict[str, Any], idempotency_key: str) -> int:
        """Send a system notification under a key chosen by the sender."""
        return self._post(NOTIFICATIONS_PATH, payload, idempotency_key)
