"""The query route in process: an answer and its conversation, or why not (404, 422, 429, 503)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.conftest import QUERY, SYNC, as_key
from ragcore_dev.processes import free_port

QUESTION = {"user_id": "alice", "query": "bronze harbor safety", "top_k": 2}


def _configure(client: TestClient, group: str, **changes: Any) -> None:
    """Settings (of `group`, e.g. "tiers") for this test's query service, which the app builds on
    the first query."""
    app: Any = client.app
    settings = app.state.settings
    changed = getattr(settings, group).model_copy(update=changes)
    app.state.settings = settings.model_copy(update={group: changed})


def test_a_question_is_answered_in_a_new_conversation_that_it_can_continue(
    client: TestClient,
) -> None:
    first = client.post("/api/v1/query/", headers=as_key(QUERY), json=QUESTION)
    assert first.status_code == 200
    answer = first.json()
    assert set(answer) == {
        "answer", "sources", "conversation_id", "message_id", "tokens_used",
        "processing_time_ms", "cached",
    }  # fmt: skip
    follow_up = {**QUESTION, "conversation_id": answer["conversation_id"]}
    # The route also answers without the trailing slash (not in the schema).
    second = client.post("/api/v1/query", headers=as_key(QUERY), json=follow_up)
    assert second.status_code == 200
    assert second.json()["conversation_id"] == answer["conversation_id"]
    assert second.json()["message_id"] != answer["message_id"]


def test_an_unknown_or_another_user_s_conversation_is_404(client: TestClient) -> None:
    mine = client.post("/api/v1/query/", headers=as_key(QUERY), json=QUESTION).json()
    theirs = {**QUESTION, "user_id": "bob", "conversation_id": mine["conversation_id"]}
    response = client.post("/api/v1/query/", headers=as_key(QUERY), json=theirs)
    assert response.status_code == 404
    assert "conversation" in response.json()["detail"]
    unknown = {**QUESTION, "conversation_id": "no-such-conversation"}
    assert client.post("/api/v1/query/", headers=as_key(QUERY), json=unknown).status_code == 404


def test_a_blank_question_or_an_unknown_field_is_422_naming_it(client: TestClient) -> None:
    blank = client.post("/api/v1/query/", headers=as_key(QUERY), json={**QUESTION, "query": " "})
    assert blank.status_code == 422 and blank.json()["errors"][0]["field"] == "query"
    extra = client.post("/api/v1/query/", headers=as_key(QUERY), json={**QUESTION, "x": 1})
    assert extra.status_code == 422 and extra.json()["errors"][0]["field"] == "x"


def test_a_sync_key_may_not_query(client: TestClient) -> None:
    response = client.post("/api/v1/query/", headers=as_key(SYNC), json=QUESTION)
    assert response.status_code == 403


def test_past_the_daily_limit_it_is_429_saying_when_it_resets(client: TestClient) -> None:
    _configure(client, "tiers", daily_limits={"free": 1, "pro": 1000, "enterprise": 10000})
    assert client.post("/api/v1/query/", headers=as_key(QUERY), json=QUESTION).status_code == 200
    response = client.post("/api/v1/query/", headers=as_key(QUERY), json=QUESTION)
    assert response.status_code == 429
    body = response.json()
    assert body["daily_limit"] == 1 and body["resets_at"]
    assert int(response.headers["Retry-After"]) >= 1


def test_an_unreachable_embedding_service_is_503_without_its_address(client: TestClient) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/embeddings"
    _configure(client, "models", embedding_url=url)
    response = client.post("/api/v1/query/", headers=as_key(QUERY), json=QUESTION)
    assert response.status_code == 503
    assert response.json()["detail"] == "the embedding service is unavailable; try again"
    assert url not in response.text
