"""The API refuses with 422 what its OpenAPI document rules out, and the document states each
rule."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ragcore.db import session_scope
from ragcore.db.models import TaskRecord
from tests.support.stack import ADMIN_KEY, QUERY_KEY, SYNC_KEY, Stack


@pytest.fixture(scope="module")
def api(stack: Stack) -> str:
    return stack.start_api()


def _post(api: str, key: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{api}{path}", json=body, headers={"X-API-Key": key}, timeout=30)


def _ask(api: str, **fields: Any) -> httpx.Response:
    return _post(
        api, QUERY_KEY, "/api/v1/query/", {"user_id": "rules", "query": "harbor", **fields}
    )


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), True, "x" * 512])
def test_filter_values_within_their_bounds_are_answered(api: str, value: object) -> None:
    assert _ask(api, filters={"chunk_index": value}).status_code == 200


@pytest.mark.parametrize(
    ("filters", "named"),
    [
        ({"chunk_index": 10**20}, "filters"),
        ({"chunk_index": 2**63}, "filters"),
        ({"category": "x" * 513}, "filters"),
        ({"not-a-field": 1}, "filters"),
        ({"category": "a\x00b"}, "NUL"),
    ],
)
def test_filter_values_and_fields_beyond_their_bounds_are_422(
    api: str, filters: dict[str, object], named: str
) -> None:
    response = _ask(api, filters=filters)
    assert response.status_code == 422 and named in response.json()["detail"]


@pytest.mark.parametrize(
    "occurred_at",
    [
        0,
        1767225600.5,
        "1767225600",
        "2026-01-01 00:00:00Z",
        "2026-01-01T00:00:00",
        "2026-01-01T00:00:00Z\n",
    ],
)
def test_a_time_is_an_rfc3339_string_with_a_timezone_never_a_number(
    api: str, occurred_at: object
) -> None:
    events = {"events": [{"document_id": "d1", "action": "upsert", "occurred_at": occurred_at}]}
    response = _post(api, SYNC_KEY, "/api/v1/sync/events", events)
    assert response.status_code == 422 and "occurred_at" in response.json()["detail"]
    assert (
        _post(api, SYNC_KEY, "/api/v1/sync/trigger-sync", {"since": occurred_at}).status_code == 422
    )
    history = httpx.get(
        f"{api}/api/v1/tasks/history",
        params={"since": str(occurred_at)},
        headers={"X-API-Key": ADMIN_KEY},
        timeout=30,
    )
    assert history.status_code == 422


def test_a_document_id_with_slashes_reaches_the_delete_route(api: str) -> None:
    # Sent raw and percent-encoded: both reach the route, and the task gets the id whole.
    response = httpx.delete(
        f"{api}/api/v1/sync/document/reports/2026%2Fq1.pdf",
        headers={"X-API-Key": SYNC_KEY},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    with session_scope() as session:
        record = session.get(TaskRecord, response.json()["task_id"])
        assert record is not None and record.kwargs == {"document_id": "reports/2026/q1.pdf"}


def test_the_published_schema_states_the_rules(api: str) -> None:
    schema = httpx.get(f"{api}/openapi.json", timeout=10).json()
    components = schema["components"]["schemas"]
    filters = next(
        b
        for b in components["QueryRequest"]["properties"]["filters"]["anyOf"]
        if b.get("type") == "object"
    )
    assert filters["additionalProperties"] is False and list(filters["patternProperties"]) == [
        "^[A-Za-z_][A-Za-z0-9_]{0,127}$"
    ]
    [string, integer, _] = next(iter(filters["patternProperties"].values()))["anyOf"]
    assert string["maxLength"] == 512 and string["pattern"] == "^[^\\x00]*$"
    assert (integer["minimum"], integer["exclusiveMaximum"]) == (-(2**63), 2**63)
    assert components["QueryRequest"]["properties"]["user_id"]["pattern"] == "^[^\\x00]*$"
    assert components["ChangeEvent"]["properties"]["occurred_at"] == {
        "type": "string",
        "format": "date-time",
        "title": "Occurred At",
    }
    history = {
        p["name"]: p["schema"]
        for p in schema["paths"]["/api/v1/tasks/history"]["get"]["parameters"]
    }
    assert (
        history["cursor"]["anyOf"][0]["pattern"]
        == "^[0-9]{1,16}\\.[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"
    )
    [document_id] = schema["paths"]["/api/v1/sync/document/{document_id}"]["delete"]["parameters"]
    assert document_id["schema"]["maxLength"] == 512
