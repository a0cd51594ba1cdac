"""Every route the running API publishes admits exactly the scopes README's table gives it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragcore.tasks import dispatch
from ragcore.tasks.contracts import CANARIES, SYNC_EMBEDDINGS, Queue
from ragcore_dev.processes import wait_until
from tests.support.stack import ADMIN_KEY, QUERY_KEY, SYNC_KEY, Stack

README = Path(__file__).resolve().parents[2] / "README.md"
KEYS = {"query": QUERY_KEY, "sync": SYNC_KEY, "admin": ADMIN_KEY}


@pytest.fixture(scope="module")
def api_url(stack: Stack) -> str:
    return stack.start_api()


def _readme_table() -> dict[tuple[str, str], set[str]]:
    """(method, path) -> the scopes README gives it ("anyone" for the open ones); remarks in
    parentheses dropped."""
    rows = re.findall(
        r"^\| `(GET|POST|PUT|PATCH|DELETE) (\S+)` \| ([^|]+) \|$", README.read_text(), re.MULTILINE
    )
    return {
        (method, path): {s.strip() for s in re.sub(r"\([^)]*\)", "", cell).split(",")}
        for method, path, cell in rows
    }


def _operations(api_url: str) -> set[tuple[str, str]]:
    schema = httpx.get(f"{api_url}/openapi.json", timeout=10).json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def test_the_readme_table_names_every_published_route_and_no_other(api_url: str) -> None:
    assert set(_readme_table()) == _operations(api_url)


def test_every_route_admits_exactly_the_scopes_of_the_readme_table(api_url: str) -> None:
    table = _readme_table()
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for (method, template), scopes in sorted(table.items()):
            path = re.sub(r"\{[^}]+\}", "x1", template)
            if scopes == {"anyone"}:
                assert client.request(method, path).status_code not in (401, 403), (
                    method,
                    template,
                )
                continue
            for headers in ({}, {"X-API-Key": "not-a-key"}):
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, template, headers, response.text)
                assert isinstance(response.json()["detail"], str)
            for scope, key in KEYS.items():
                response = client.request(method, path, headers={"X-API-Key": key})
                expected = "admitted" if scope in scopes else "refused"
                seen = "refused" if response.status_code == 403 else "admitted"
                assert response.status_code != 401 and seen == expected, (
                    method,
                    template,
                    scope,
                    response.text,
                )


def test_a_sync_key_reads_the_status_of_sync_tasks_only_and_never_a_traceback(
    stack: Stack, api_url: str
) -> None:
    # no sync worker yet: it waits, PENDING
    sync_task = dispatch.send(stack.producer, SYNC_EMBEDDINGS, {})
    other_task = dispatch.send(stack.producer, CANARIES[Queue.CLEANUP], {})
    with httpx.Client(base_url=api_url, timeout=30) as client:

        def status(task_id: str, key: str) -> httpx.Response:
            return client.get(f"/api/v1/tasks/status/{task_id}", headers={"X-API-Key": key})

        assert status(sync_task, SYNC_KEY).json()["queue"] == "sync"
        assert status(other_task, SYNC_KEY).status_code == 403
        assert status(sync_task, QUERY_KEY).status_code == 403
        assert status(other_task, ADMIN_KEY).json()["queue"] == "cleanup"

        stack.start_worker(Queue.SYNC)
        failed = dispatch.send(stack.producer, CANARIES[Queue.SYNC], {"fail": True})
        admin_view: dict[str, Any] = wait_until(
            lambda: (b := status(failed, ADMIN_KEY).json())["status"] == "FAILURE" and b,
            30,
            "the failure",
        )
        assert "PermanentTaskError" in admin_view["traceback"]
        sync_view = status(failed, SYNC_KEY).json()
        assert sync_view["error"].startswith("the task failed (PermanentTaskError); an admin key")
        assert sync_view["traceback"] is None
