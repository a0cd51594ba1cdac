"""Every route the running API publishes is guarded, and its schema holds under property-based calls.

The walk covers whatever routes exist when it runs: it reads /openapi.json from the API process and
the scopes each route admits from the app's own `require(...)` dependencies.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from tests.support.stack import ADMIN_KEY, QUERY_KEY, SYNC_KEY, Stack

#: Routes documented as open to anyone: the probes of the orchestrator.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
KEYS_BY_SCOPE = {"query": QUERY_KEY, "sync": SYNC_KEY}


@pytest.fixture(scope="module")
def api_url(stack: Stack) -> str:
    return stack.start_api()


def _allowed_scopes(call: Callable[..., Any]) -> tuple[str, ...] | None:
    """The scopes of an `api.auth.require(...)` check (read from its closure), else None."""
    try:
        allowed = inspect.getclosurevars(call).nonlocals.get("allowed")
    except TypeError:
        return None
    return tuple(allowed) if isinstance(allowed, tuple) else None


def _api_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute with its full path, through included routers (FastAPI nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif (inner := getattr(route, "original_router", None)) is not None:
            context_prefix = getattr(getattr(route, "include_context", None), "prefix", "")
            yield from _api_routes(inner.routes, prefix + context_prefix)


def _route_scopes() -> dict[tuple[str, str], tuple[str, ...]]:
    """(method, path) -> the scopes admitted besides admin; admin-only when no `require` is found."""
    scopes: dict[tuple[str, str], tuple[str, ...]] = {}
    for path, route in _api_routes(create_app().routes):
        found: list[tuple[str, ...]] = []
        pending = list(route.dependant.dependencies)
        while pending:
            dependency = pending.pop()
            pending.extend(dependency.dependencies)
            if dependency.call is not None and (allowed := _allowed_scopes(dependency.call)) is not None:
                found.append(allowed)
        for method in route.methods:
            scopes[(method, path)] = found[0] if found else ("admin",)
    return scopes


def _operations(api_url: str) -> Iterator[tuple[str, str, str]]:
    """(method, path template, concrete URL path) of every operation in the published schema."""
    schema = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    for path, operations in schema["paths"].items():
        for method in operations:
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path, re.sub(r"\{[^}]+\}", "x1", path)


def test_every_route_refuses_missing_unknown_and_under_scoped_keys(api_url: str) -> None:
    scopes = _route_scopes()
    checked = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for method, template, path in _operations(api_url):
            if (method, template) in PUBLIC:
                continue
            checked.append((method, template))
            for headers in ({}, {"X-API-Key": "not-a-key"}):
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, template, headers, response.text)
                assert isinstance(response.json()["detail"], str)
            admitted = scopes[(method, template)]
            for scope, key in KEYS_BY_SCOPE.items():
                if scope not in admitted:
                    response = client.request(method, path, headers={"X-API-Key": key})
                    assert response.status_code == 403, (method, template, scope, response.text)
    # The walk saw the task-management routes (and whatever else exists).
    assert ("POST", "/api/v1/tasks/revoke/{task_id}") in checked and ("GET", "/metrics") in checked


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
    # covers missing and wrong keys).
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
