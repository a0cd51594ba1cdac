"""A keyless or wrong-key request is refused from its headers, its body never read; authorized
large bodies are parsed a few at a time."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send  # pants: no-infer-dep (with fastapi)

from api.conftest import SYNC
from api.key_gate import KeyGate
from api.main import create_app

MB = 1024 * 1024
EVENTS = json.dumps(
    {
        "events": [
            {"document_id": "d" * 400, "action": "delete", "occurred_at": "2026-01-01T00:00:00Z"}
        ]
        * 5000
    }
).encode()


class ReadsCounted:
    """The app behind an ASGI wrapper that counts how many body messages the app asked for."""

    def __init__(self, app: object) -> None:
        self.app = app
        self.reads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.reads += 1
            return message

        await self.app(scope, counted, send)  # type: ignore[operator]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "not-a-key"}], ids=["keyless", "wrong key"])
def test_an_unauthorized_events_post_is_refused_before_its_body_is_read(
    app_settings: None, headers: dict[str, str]
) -> None:
    assert len(EVENTS) > 2 * MB
    app = create_app()
    counted = ReadsCounted(app)
    with TestClient(counted, raise_server_exceptions=False) as client:
        response = client.post(
            "/api/v1/sync/events",
            content=EVENTS,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 401, response.text
        assert response.json()["detail"] in ("missing X-API-Key header", "unknown API key")
        assert counted.reads == 0  # not a byte of the body was asked for, let alone parsed
        accepted = client.post(
            "/api/v1/sync/events",
            content=EVENTS,
            headers={"X-API-Key": SYNC, "Content-Type": "application/json"},
        )
    assert accepted.status_code == 202, accepted.text
    assert counted.reads >= 1
    app.state.celery.close()


def test_authorized_large_bodies_are_parsed_a_bounded_number_at_a_time() -> None:
    running = peak = 0

    async def parse(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)  # "parsing"
        running -= 1
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gate = KeyGate(parse, {"k": "sync"}, large_bytes=1024, concurrent_large=2)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            large = [
                client.post("/api/v1/sync/events", content=b"x" * 4096, headers={"X-API-Key": "k"})
                for _ in range(10)
            ]
            return [r.status_code for r in await asyncio.gather(*large)]

    assert asyncio.run(burst()) == [202] * 10
    assert peak == 2
    # small bodies are not held back
    running = peak = 0

    async def small() -> None:
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            await asyncio.gather(
                *(
                    client.post("/api/v1/sync/events", content=b"{}", headers={"X-API-Key": "k"})
                    for _ in range(6)
                )
            )

    asyncio.run(small())
    assert peak == 6
