"""Every route the running API publishes declares its key, and its schema holds under property-based
calls.

Which scope reaches which route: tests/integration/scopes_test.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.stack import ADMIN_KEY, Stack

#: Routes documented as open to anyone: the probes of the orchestrator.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}


@pytest.fixture(scope="module")
def api_url(stack: Stack) -> str:
    # No worker runs here: a short broadcast wait keeps list/workers from paying 1 s per generated
    # call.
    return stack.start_api(inspect_timeout_seconds="0.05")


def test_the_published_schema_declares_the_key_on_every_guarded_route(api_url: str) -> None:
    schema = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    unguarded = [
        (method.upper(), path)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if (method.upper(), path) not in PUBLIC and not op.get("security")
    ]
    assert unguarded == []


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    # Authenticated as admin through the schema's own security scheme, so the auth check can also
    # send each request without the key and with a wrong one (scopes:
    # tests/integration/scopes_test.py).
    config = schemathesis.Config.from_dict(
        {"auth": {"openapi": {"APIKeyHeader": {"api_key": ADMIN_KEY}}}}
    )
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
# Derandomized (a fixed seed per operation) and without an example database: CI sees the same cases
# every run.
@settings(
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_generated_requests_exactly_as_its_schema_says(case: Any) -> None:
    # Every check schemathesis has (its default): no 5xx, documented statuses, content types,
    # headers and bodies, invalid data refused and valid data accepted.
    case.call_and_validate()
