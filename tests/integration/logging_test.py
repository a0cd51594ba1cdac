"""Every deployable logs one JSON object per line, with the task or request it belongs to."""

import json
from typing import Any

from ragcore.tasks import dispatch
from ragcore.tasks.contracts import CANARIES, Queue
from tests.support.stack import Stack


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # fails on any line that is not JSON


def test_worker_log_lines_are_json_and_carry_the_task_id_and_name(stack: Stack) -> None:
    worker = stack.start_worker(Queue.USER, log_task_lifecycle="true")
    task_id = dispatch.send(stack.producer, CANARIES[Queue.USER])
    stack.producer.AsyncResult(task_id).get(timeout=30)
    worker.stop()
    entries = _json_lines(worker.logs())
    in_task = [e for e in entries if e.get("task_id") == task_id]
    assert in_task, "no log line inside the task carried its id"
    assert {e["task_name"] for e in in_task} == {CANARIES[Queue.USER].name}
    assert {e["service"] for e in entries} == {"worker-user"}


def test_by_default_a_worker_logs_no_line_per_task_but_still_logs_a_failure(stack: Stack) -> None:
    worker = stack.start_worker(Queue.USER, name="quiet")
    ok = dispatch.send(stack.producer, CANARIES[Queue.USER])
    failed = dispatch.send(stack.producer, CANARIES[Queue.USER], {"fail": True})
    stack.producer.AsyncResult(ok).get(timeout=30)
    stack.producer.AsyncResult(failed).get(timeout=30, propagate=False)
    worker.stop()
    entries = _json_lines(worker.logs())
    assert not [e for e in entries if ok in e["message"]], "a line for a task that simply succeeded"
    [failure] = [e for e in entries if e.get("task_id") == failed and e["level"] == "ERROR"]
    assert "the canary was asked to fail" in failure["message"] + failure.get("exc_info", "")


def test_api_log_lines_are_json_and_carry_the_request_id(stack: Stack) -> None:
    stack.start_api()
    with stack.api() as api:
        response = api.get("/api/v1/tasks/status/nope", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 404 and response.headers["X-Request-ID"] == "req-123"
    api_process = stack.deployables[-1]
    api_process.stop()
    entries = _json_lines(api_process.logs())
    access = [e for e in entries if e.get("request_id") == "req-123"]
    assert access and access[0]["status"] == 404 and access[0]["logger"] == "ragcore.access"
