"""Request bodies are refused with 413 while they stream in, keyless or keyed, and the API's memory
stays flat."""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragcore_dev.processes import Deployable
from tests.support.stack import QUERY_KEY, SYNC_KEY, Stack

MB = 1024 * 1024


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[tuple[Stack, Deployable]]:
    stack.start_api()
    yield stack, stack.deployables[-1]


def _kib(pid: int, field: str) -> int:
    line = next(
        row
        for row in Path(f"/proc/{pid}/status").read_text().splitlines()
        if row.startswith(field + ":")
    )
    return int(line.split()[1]) * 1024


def _post(
    url: str, path: str, size: int, *, chunked: bool, key: str | None = None
) -> tuple[int, dict[str, object]]:
    """POST `size` bytes, stopping as soon as the server answers; the status and JSON body of its
    answer."""
    host, port = url.removeprefix("http://").split(":")
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{framing}\r\n"
    )
    head += f"X-API-Key: {key}\r\n" if key else ""
    piece = b"[" + b" " * (64 * 1024 - 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((head + "\r\n").encode())
        sent = 0
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:
                data = piece[: size - sent]
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent += len(data)
            if chunked and sent >= size:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed; its answer is still readable
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            try:
                chunk = sock.recv(65536)
            # the server closed with our bytes unread; what it sent first stays
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62


@pytest.mark.parametrize("chunked", [True, False], ids=["counted", "content-length"])
def test_a_200_mb_keyless_body_is_refused_and_memory_stays_flat(
    api: tuple[Stack, Deployable], chunked: bool
) -> None:
    stack, process = api
    assert stack.api_url and process.process
    pid = process.process.pid
    before = _kib(pid, "VmRSS")
    status, body = _post(stack.api_url, "/api/v1/sync/events", 200 * MB, chunked=chunked)
    # A declared size over the limit is a 413 at once; a streamed body of a keyless caller is
    # refused from its headers (api.key_gate), before a byte of it is read.
    if chunked:
        assert (status, body["detail"]) == (401, "missing X-API-Key header")
    else:
        assert status == 413 and "limit" in str(body["detail"])
    # The peak, not only what is left: the body must never have been held.
    assert _kib(pid, "VmHWM") - before < 64 * MB


def test_a_keyed_query_over_its_limit_is_413_and_under_it_is_read(
    api: tuple[Stack, Deployable],
) -> None:
    stack, _ = api
    assert stack.api_url
    assert (
        _post(stack.api_url, "/api/v1/query/", 64 * 1024 + 1, chunked=True, key=QUERY_KEY)[0] == 413
    )
    assert (
        _post(stack.api_url, "/api/v1/query/", 64 * 1024 + 1, chunked=False, key=QUERY_KEY)[0]
        == 413
    )
    # At the limit the body is read and judged on its content (an unfinished JSON array: 400/422).
    assert _post(stack.api_url, "/api/v1/query/", 64 * 1024, chunked=True, key=QUERY_KEY)[0] in (
        400,
        422,
    )


def test_an_events_batch_beyond_the_query_limit_is_accepted(api: tuple[Stack, Deployable]) -> None:
    stack, _ = api
    with stack.api(key=SYNC_KEY) as client:
        event = {
            "document_id": "d" * 500,
            "action": "upsert",
            "occurred_at": "2026-01-01T00:00:00Z",
        }
        response = client.post("/api/v1/sync/events", json={"events": [event] * 1000})
    assert response.status_code == 202, response.text
    assert response.json() == {"stored": 1000}
