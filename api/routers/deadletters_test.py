"""The dead-letter routes in process: pages by cursor, one letter with its exact bytes, discard,
admin only; /metrics counts them."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from api.conftest import ADMIN, QUERY, SYNC, as_key
from ragcore import deadletters
from ragcore.deadletters import Poison, Reason


def _record(body: bytes, reason: Reason = Reason.UNDECODABLE, queue: str = "notifications") -> None:
    deadletters.record(Poison(queue=queue, reason=reason, body=body, detail="why"))


def test_dead_letters_are_paged_newest_first_by_cursor_and_filtered(client: TestClient) -> None:
    for n in range(3):
        _record(f"p{n}".encode())
    _record(b"u", reason=Reason.UNKNOWN_TASK, queue="user")
    first = client.get("/api/v1/deadletters?limit=3", headers=as_key(ADMIN)).json()
    assert [d["body"] for d in first["dead_letters"]] == ["u", "p2", "p1"]
    rest = client.get(
        f"/api/v1/deadletters?limit=3&cursor={first['next_cursor']}", headers=as_key(ADMIN)
    ).json()
    assert ([d["body"] for d in rest["dead_letters"]], rest["next_cursor"]) == (["p0"], None)
    unknown = client.get(
        "/api/v1/deadletters?reason=unknown_task&queue=user", headers=as_key(ADMIN)
    ).json()
    assert [(d["body"], d["reason"]) for d in unknown["dead_letters"]] == [("u", "unknown_task")]


def test_one_dead_letter_shows_its_exact_bytes_size_and_count(client: TestClient) -> None:
    raw = b"\xff\x00" + b"x" * (deadletters.BODY_LIMIT + 10)
    _record(raw)
    _record(raw)
    [listed] = client.get("/api/v1/deadletters", headers=as_key(ADMIN)).json()["dead_letters"]
    one = client.get(f"/api/v1/deadletters/{listed['id']}", headers=as_key(ADMIN)).json()
    assert base64.b64decode(one["body_base64"]) == raw[: deadletters.BODY_LIMIT]
    assert (one["body_bytes"], one["body_truncated"], one["count"]) == (len(raw), True, 2)
    assert one["body"].startswith("\ufffd\x00x")


def test_a_discarded_dead_letter_is_gone_and_a_missing_one_is_404(client: TestClient) -> None:
    _record(b"bad")
    [letter] = client.get("/api/v1/deadletters", headers=as_key(ADMIN)).json()["dead_letters"]
    url = f"/api/v1/deadletters/{letter['id']}"
    assert client.delete(url, headers=as_key(ADMIN)).status_code == 204
    assert client.get(url, headers=as_key(ADMIN)).status_code == 404
    gone = client.delete(url, headers=as_key(ADMIN))
    assert gone.status_code == 404 and "no dead letter" in gone.json()["detail"]
    assert client.get("/api/v1/deadletters/0", headers=as_key(ADMIN)).status_code == 422


def test_only_an_admin_key_reaches_dead_letters(client: TestClient) -> None:
    for key in (QUERY, SYNC):
        assert client.get("/api/v1/deadletters", headers=as_key(key)).status_code == 403
        assert client.delete("/api/v1/deadletters/1", headers=as_key(key)).status_code == 403
    assert client.get("/api/v1/deadletters").status_code == 401


def test_metrics_count_dead_letters_and_their_messages_by_queue_and_reason(
    client: TestClient,
) -> None:
    _record(b"a")
    _record(b"a")
    _record(b"b", reason=Reason.INVALID_ARGUMENTS)
    text = client.get("/metrics", headers=as_key(ADMIN)).text
    assert 'ragcore_dead_letters{queue="notifications",reason="undecodable"} 1.0' in text
    assert 'ragcore_dead_letter_messages{queue="notifications",reason="undecodable"} 2.0' in text
    assert 'ragcore_dead_letters{queue="notifications",reason="invalid_arguments"} 1.0' in text


def test_a_method_the_path_does_not_take_is_405_naming_every_method_it_does(
    client: TestClient,
) -> None:
    # Starlette names only the first route's methods; GET and DELETE are two routes here.
    response = client.request("OPTIONS", "/api/v1/deadletters/1", headers=as_key(ADMIN))
    assert (response.status_code, response.headers["allow"]) == (405, "DELETE, GET, HEAD")
