"""The console in process (TestClient, private Redis, SQLite): sign-in, its cookie, CSRF, the pages,
and the console off."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.conftest import ADMIN, QUERY
from api.main import create_app
from ragcore.db import session_scope
from ragcore.db.models import DeadLetter, TaskRecord
from ragcore.settings import get_settings
from ragcore.tasks import contracts, dispatch
from ragcore_dev.processes import wait_until

PAGES = (
    "/console",
    "/console/tasks",
    "/console/deliveries",
    "/console/dead-letters",
    "/console/workers",
)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def _messages(html: str) -> list[str]:
    return re.findall(r'class="(?:error|notice)"[^>]*>([^<]*)<', html)


def sign_in(client: TestClient, key: str = ADMIN) -> TestClient:
    form = client.get("/console/sign-in")
    response = client.post("/console/sign-in", data={"key": key, "csrf": _csrf(form.text)})
    assert response.status_code == 200, response.text
    return client


@pytest.fixture
def signed_in(client: TestClient) -> TestClient:
    return sign_in(client)


def test_every_page_sends_a_stranger_to_the_sign_in_page(client: TestClient) -> None:
    for path in PAGES:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == f"/console/sign-in?next={path}"


def test_an_admin_key_signs_in_and_the_cookie_holds_no_key(client: TestClient) -> None:
    form = client.get("/console/sign-in")
    response = client.post(
        "/console/sign-in",
        data={"key": ADMIN, "csrf": _csrf(form.text), "next": "/console/workers"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/console/workers"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie  # plain HTTP here; an HTTPS request gets Secure
    assert ADMIN not in cookie
    for path in PAGES:
        assert client.get(path).status_code == 200, path


def test_the_cookie_is_secure_over_https(app_settings: None) -> None:
    app = create_app()
    with TestClient(app, base_url="https://testserver") as client:
        form = client.get("/console/sign-in")
        response = client.post(
            "/console/sign-in",
            data={"key": ADMIN, "csrf": _csrf(form.text)},
            follow_redirects=False,
        )
        assert "Secure" in response.headers["set-cookie"]
    app.state.celery.close()


def test_a_query_key_or_an_unknown_key_is_refused_saying_why(client: TestClient) -> None:
    form = client.get("/console/sign-in")
    query = client.post("/console/sign-in", data={"key": QUERY, "csrf": _csrf(form.text)})
    assert query.status_code == 403
    assert "the console takes an admin key" in " ".join(_messages(query.text)).replace("&#39;", "'")
    unknown = client.post("/console/sign-in", data={"key": "nope", "csrf": _csrf(form.text)})
    assert unknown.status_code == 401 and "not configured" in " ".join(_messages(unknown.text))
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_a_sign_in_without_the_forms_token_is_refused(client: TestClient) -> None:
    response = client.post("/console/sign-in", data={"key": ADMIN})
    assert response.status_code == 403
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_an_action_without_the_sessions_csrf_token_is_refused_and_nothing_happens(
    signed_in: TestClient,
) -> None:
    task_id = dispatch.send(signed_in.app.state.celery, contracts.CLEANUP_OLD_CACHE)  # type: ignore[attr-defined]
    for data in ({}, {"csrf": "forged"}):
        response = signed_in.post(f"/console/tasks/{task_id}/revoke", data=data)
        assert response.status_code == 403
        assert "no valid token of your session" in " ".join(_messages(response.text))
    with session_scope() as session:
        assert session.get(TaskRecord, task_id).state == "PENDING"  # type: ignore[union-attr]


def test_revoke_confirms_first_then_revokes(signed_in: TestClient) -> None:
    task_id = dispatch.send(signed_in.app.state.celery, contracts.CLEANUP_OLD_CACHE)  # type: ignore[attr-defined]
    confirm = signed_in.get(f"/console/tasks/{task_id}/revoke")
    assert confirm.status_code == 200 and f"Revoke task {task_id}?" in confirm.text
    with session_scope() as session:
        assert session.get(TaskRecord, task_id).state == "PENDING"  # type: ignore[union-attr]
    done = signed_in.post(
        f"/console/tasks/{task_id}/revoke", data={"csrf": _csrf(confirm.text), "terminate": "false"}
    )
    assert done.url.path == f"/console/tasks/{task_id}" and "revoked" in _messages(done.text)
    with session_scope() as session:
        assert session.get(TaskRecord, task_id).state == "REVOKED"  # type: ignore[union-attr]


def test_run_again_sends_the_same_arguments_under_a_new_id_linked_both_ways(
    signed_in: TestClient,
) -> None:
    celery = signed_in.app.state.celery  # type: ignore[attr-defined]
    first = dispatch.send(celery, contracts.CLEANUP_QUERY_CACHE, {"days": 7})
    assert "run-again" not in signed_in.get(f"/console/tasks/{first}").text  # still waiting
    with session_scope() as session:
        session.get(TaskRecord, first).state = "FAILURE"  # type: ignore[union-attr]
    page = signed_in.get(f"/console/tasks/{first}")
    assert 'id="run-again"' in page.text
    confirm = signed_in.get(f"/console/tasks/{first}/run-again")
    again = signed_in.post(f"/console/tasks/{first}/run-again", data={"csrf": _csrf(confirm.text)})
    new_id = again.url.path.rsplit("/", 1)[-1]
    assert new_id == f"{first}.again.1"
    assert f'href="/console/tasks/{first}"' in again.text  # the run again names its first run
    with session_scope() as session:
        assert session.get(TaskRecord, new_id).kwargs == {"days": 7}  # type: ignore[union-attr]
    assert f'href="/console/tasks/{new_id}"' in signed_in.get(f"/console/tasks/{first}").text


def test_sign_out_ends_the_session(signed_in: TestClient) -> None:
    page = signed_in.get("/console")
    out = signed_in.post("/console/sign-out", data={"csrf": _csrf(page.text)})
    assert out.url.path == "/console/sign-in" and "signed out" in _messages(out.text)
    assert signed_in.get("/console", follow_redirects=False).status_code == 303


def test_removing_the_admin_key_ends_its_sessions_at_once(signed_in: TestClient) -> None:
    assert signed_in.get("/console").status_code == 200
    settings = signed_in.app.state.settings  # type: ignore[attr-defined]
    settings.api.keys = {k: v for k, v in settings.api.keys.items() if v != "admin"}
    assert signed_in.get("/console", follow_redirects=False).status_code == 303


def test_a_session_expires(monkeypatch: pytest.MonkeyPatch, app_settings: None) -> None:
    monkeypatch.setenv("RAGCORE_CONSOLE_SESSION_SECONDS", "3")
    get_settings.cache_clear()
    app = create_app()
    with TestClient(app) as client:
        sign_in(client)
        assert client.get("/console", follow_redirects=False).status_code == 200
        # The signature's age is counted in whole seconds: expired within 3-5 s of the sign-in.
        wait_until(
            lambda: client.get("/console", follow_redirects=False).status_code == 303,
            15,
            "the session to expire",
            interval=0.5,
        )
        assert client.get("/console/sign-in").status_code == 200  # the sign-in page still opens
    app.state.celery.close()


def test_bad_filters_are_a_422_that_says_what_is_wrong(signed_in: TestClient) -> None:
    for path, says in (
        ("/console/tasks?state=NOPE", "state: 'NOPE' is not one of"),
        ("/console/tasks?since=yesterday", "since: 'yesterday' is not a time"),
        ("/console/deliveries?failed_after=soon", "failed_after"),
    ):
        response = signed_in.get(path)
        assert response.status_code == 422, path
        assert says in " ".join(_messages(response.text)).replace("&#39;", "'"), path


def test_a_bulk_action_counts_before_it_confirms_and_needs_a_criterion(
    signed_in: TestClient,
) -> None:
    confirm = signed_in.get("/console/deliveries/redrive?task_name=send_system_notification")
    assert "Re-drive 0 deliveries?" in confirm.text
    refused = signed_in.get("/console/deliveries/redrive?status=waiting")
    assert refused.status_code == 422 and "give at least one of" in refused.text


def test_the_pictures_draw_each_queue_and_each_finished_tasks_durations(
    signed_in: TestClient,
) -> None:
    task_id = dispatch.send(signed_in.app.state.celery, contracts.CLEANUP_OLD_CACHE)  # type: ignore[attr-defined]
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        record.state, record.run_seconds = "SUCCESS", 0.3
        record.started_at = record.finished_at = record.sent_at
    queues = signed_in.get("/console/charts/queues.svg")
    assert queues.headers["content-type"] == "image/svg+xml"
    for queue in contracts.Queue:
        assert f">{queue.value}</text>" in queues.text
    assert "1 finished" in queues.text  # the cleanup task, in the last step
    durations = signed_in.get("/console/charts/durations.svg").text
    assert ">cleanup_old_cache</text>" in durations and "1 runs, mean 0.30s" in durations
    assert "1 took up to 0.5s" in durations


def test_a_dead_letter_is_listed_counted_and_discarded_after_a_confirmation(
    signed_in: TestClient,
) -> None:
    with session_scope() as session:
        letter = DeadLetter(
            digest="d" * 64,
            queue="sync",
            reason="unknown_task",
            task_name="no_such_task",
            detail="no task named 'no_such_task'",
            body=b"{}",
            body_bytes=2,
        )
        session.add(letter)
        session.flush()
        letter_id = letter.id
    assert ">1 kept</a>" in signed_in.get("/console").text
    listed = signed_in.get("/console/dead-letters").text
    assert "no_such_task" in listed and f"/console/dead-letters/{letter_id}/discard" in listed
    confirm = signed_in.get(f"/console/dead-letters/{letter_id}/discard")
    done = signed_in.post(
        f"/console/dead-letters/{letter_id}/discard", data={"csrf": _csrf(confirm.text)}
    )
    assert "dead letter discarded" in _messages(done.text)
    assert "No dead letter is kept" in done.text


def test_the_console_is_not_in_the_openapi_document(client: TestClient) -> None:
    assert "/console" not in client.get("/openapi.json").text


def test_the_console_is_off_with_ragcore_console_false(
    monkeypatch: pytest.MonkeyPatch, app_settings: None
) -> None:
    monkeypatch.setenv("RAGCORE_CONSOLE", "false")
    get_settings.cache_clear()
    app = create_app()
    with TestClient(app) as client:
        for path in (*PAGES, "/console/sign-in", "/console/static/console.js"):
            assert client.get(path, follow_redirects=False).status_code == 404, path
    app.state.celery.close()
