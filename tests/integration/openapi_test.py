"""Every route the running API publishes declares its key, and its schema holds under property-based calls.

Which scope reaches which route: tests/integration/scopes_test.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.stack import ADMIN_KEY, Stack

#: Routes documented as open to anyone: the probes of the orchestrator.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}


@pytest.fixture(scope="module")
def api_url(stack: Stack) -> str:
    return stack.start_api()


def test_the_published_schema_declares_the_key_on_every_guarded_route(api_url: str) -> None:
    schema = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    unguarded = [
        (method.upper(), path) for path, ops in schema["paths"].items() for method, op in ops.items()
        if (method.upper(), path) not in PUBLIC and not op.get("security")
    ]
    assert unguarded == []


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> Any:
    loaded = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    # Authenticated as admin throughout; the key is not a generated parameter (the walk above
    # and tests/integration/scopes_test.py cover missing and wrong keys).
    loaded.config.update(headers={"X-API-Key": ADMIN_KEY})
    loaded.config.generation.update(with_security_parameters=False)
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_generated_requests_without_5xx_or_schema_violations(case: Any) -> None:
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
