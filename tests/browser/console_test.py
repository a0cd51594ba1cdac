"""The operator console in a real browser (Debian's headless Chromium driven by Playwright) against
the real API, workers and Beat: sign in, watch a full sync's progress bar reach done, revoke a
waiting task, re-drive the deliveries a Users outage left waiting and see their count, sign out;
a wrong key and a form without its CSRF token are refused.

Screenshots of the main pages go to $RAGCORE_CONSOLE_SCREENSHOTS when set (docs/console/ is made
so), else to the test's temporary folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import func, select

from ragcore.db import session_scope
from ragcore.db.models import FailedDelivery
from ragcore.tasks import contracts, dispatch
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import wait_until
from ragcore_dev.standins.ingest import IngestApp, start_ingest
from ragcore_dev.standins.qdrant import start_qdrant
from ragcore_dev.standins.server import Running
from ragcore_dev.standins.users import UsersApp, start_users
from ragcore_dev.tools import debian_tool
from tests.support.stack import ADMIN_KEY, QUERY_KEY, Stack, ledger_record, running_stack

#: Generous: the machine is shared, and a page waits on the broker and the database.
WAIT_MS = 30_000
NOTIFICATIONS = 3


@dataclass
class Rig:
    stack: Stack
    ingest: Running[IngestApp]
    users: Running[UsersApp]
    browser: Browser
    shots: Path

    def page(self) -> Page:
        page = self.browser.new_page(
            base_url=self.stack.api_url, viewport={"width": 1280, "height": 900}
        )
        page.set_default_timeout(WAIT_MS)
        return page

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    chromium = debian_tool("chromium", "chromium")
    shots = Path(os.environ.get("RAGCORE_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with (
        start_ingest(documents=20, chunks=5) as ingest,
        start_qdrant(tempfile.mkdtemp(prefix="qdrant-")) as qdrant,
        start_users() as users,
        running_stack(
            ingest_url=ingest.url,
            qdrant_url=qdrant.url,
            qdrant_collection="console_test",
            users_url=users.url,
            # Pages of 10 chunks: a full sync of 100 takes ten slow pages, long enough to watch.
            sync_batch_size="10",
            # Deliveries the outage leaves wait for their own re-drive 10 minutes on, and the
            # breaker stays closed: only the operator's bulk re-drive sends them within the test.
            delivery_redrive_base_seconds="600",
            breaker_fail_max="1000",
        ) as stack,
        sync_playwright() as playwright,
    ):
        stack.start_worker(Queue.SYNC)
        stack.start_worker(Queue.NOTIFICATIONS)
        # Beat re-drives the deliveries an operator made due; no other schedule.
        stack.start("services.beat.main", beat_schedule="{}")
        stack.start_api()
        # No worker consumes `cleanup` here: a task sent to it waits, to be revoked.
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield Rig(stack, ingest, users, browser, shots)
        finally:
            browser.close()


def sign_in(page: Page, key: str = ADMIN_KEY) -> None:
    page.goto("/console")
    expect(page).to_have_url(f"{page.url.split('/console')[0]}/console/sign-in?next=/console")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")


@pytest.fixture
def page(rig: Rig) -> Iterator[Page]:
    page = rig.page()
    sign_in(page)
    expect(page.locator("h1")).to_have_text("Overview")
    yield page
    page.close()


def test_a_wrong_key_and_a_query_key_are_refused_saying_why(rig: Rig) -> None:
    page = rig.page()
    sign_in(page, "not-a-key")
    expect(page.locator(".error")).to_contain_text("this key is not configured")
    rig.shot(page, "sign-in-refused")
    page.fill("input[name=key]", QUERY_KEY)
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("the console takes an admin key")
    page.goto("/console/tasks")
    expect(page.locator("h1")).to_have_text("Sign in")
    page.close()


def test_a_full_sync_found_in_the_task_list_shows_its_progress_moving_to_done(
    rig: Rig, page: Page
) -> None:
    rig.ingest.app.faults.set_delay(0.5)  # each page of the feed takes half a second
    try:
        with rig.stack.api() as api:
            task_id = api.post("/api/v1/sync/trigger-full-sync").json()["task_id"]
        page.click("nav >> text=Tasks")
        page.select_option("select[name=name]", contracts.TRIGGER_FULL_SYNC.name)
        page.click("form.filters button[type=submit]")
        page.click(f"#tasks a[href='/console/tasks/{task_id}']")
        seen: list[tuple[str, str | None, str | None]] = []
        shot = rig.shots / "task-progress.png"
        shot.unlink(missing_ok=True)

        def snapshot() -> bool:
            try:
                status = page.locator("#progress").get_attribute("data-status", timeout=2000)
                bar = page.locator("#progress progress")
                value = bar.get_attribute("value", timeout=500) if bar.count() else None
                total = bar.get_attribute("max", timeout=500) if bar.count() else None
            except Exception:  # the page reloads itself once the task is done
                return False
            if status and (not seen or seen[-1] != (status, value, total)):
                seen.append((status, value, total))
                if status == "PROGRESS" and value not in (None, "0") and not shot.exists():
                    rig.shot(page, "task-progress")
            return status == "SUCCESS"

        wait_until(snapshot, 120, "the full sync's page showing SUCCESS", interval=0.2)
    finally:
        rig.ingest.app.faults.clear()
    moving = [int(v) for s, v, _ in seen if s == "PROGRESS" and v is not None]
    assert moving and moving == sorted(moving), seen  # the bar moved forward while it ran
    assert len(set(moving)) >= 2, seen  # ... and more than once, without the page being reloaded
    assert seen[-1] == ("SUCCESS", "100", "100"), seen
    expect(page.locator("#result")).to_contain_text('"copied": 100')
    rig.shot(page, "task")


def test_a_waiting_task_is_revoked_after_a_confirmation(rig: Rig, page: Page) -> None:
    task_id = dispatch.send(rig.stack.producer, contracts.CLEANUP_OLD_CACHE)  # nobody consumes it
    page.goto(f"/console/tasks/{task_id}")
    expect(page.locator("#progress")).to_have_attribute("data-status", "PENDING")
    page.click("#revoke")
    expect(page.locator("h1")).to_have_text(f"Revoke task {task_id}?")
    assert ledger_record(task_id, "PENDING").state == "PENDING"  # not before the confirmation
    page.click("#confirm")
    expect(page.locator(".notice")).to_have_text("revoked")
    expect(page.locator("#progress")).to_have_attribute("data-status", "REVOKED")
    assert ledger_record(task_id, "REVOKED").revoked


def test_deliveries_left_waiting_by_a_users_outage_are_re_driven_in_bulk_showing_their_count(
    rig: Rig, page: Page
) -> None:
    rig.users.app.faults.outage(503)
    for n in range(NOTIFICATIONS):
        dispatch.send(
            rig.stack.producer,
            contracts.SEND_SYSTEM_NOTIFICATION,
            {
                "notification_type": "maintenance",
                "title": f"Window {n}",
                "message": "The harbour is closed on Sunday.",
                "user_ids": ["alice"],
                "idempotency_key": f"console-test-{n}",
            },
        )

    def waiting() -> bool:
        with session_scope() as session:
            count = session.scalar(
                select(func.count()).where(
                    FailedDelivery.status == "waiting",
                    FailedDelivery.task_name == contracts.SEND_SYSTEM_NOTIFICATION.name,
                )
            )
        return count == NOTIFICATIONS

    wait_until(waiting, 120, "the notifications waiting after their quick retries", interval=0.5)
    rig.users.app.faults.clear()  # Users is back; the deliveries' own re-drive is 10 minutes away

    page.goto("/console")
    page.click("#deliveries-waiting")
    page.select_option("select[name=task_name]", contracts.SEND_SYSTEM_NOTIFICATION.name)
    page.click("form.filters button[type=submit]")
    expect(page.locator("#total")).to_have_text(str(NOTIFICATIONS))
    rig.shot(page, "deliveries")
    page.click("#redrive-all")
    expect(page.locator("h1")).to_have_text(f"Re-drive {NOTIFICATIONS} deliveries?")
    page.click("#confirm")
    expect(page.locator(".notice")).to_have_text(f"{NOTIFICATIONS} re-driven")
    wait_until(
        lambda: len(rig.users.app.deliveries("notifications")) == NOTIFICATIONS,
        60,
        "the re-driven notifications at Users",
        interval=0.5,
    )


def test_a_form_without_the_sessions_csrf_token_is_refused(rig: Rig, page: Page) -> None:
    task_id = dispatch.send(rig.stack.producer, contracts.CLEANUP_OLD_CACHE)
    # The session's cookie goes along; only the token is missing or forged.
    forms: list[dict[str, str | float | bool]] = [
        {"terminate": "false"},
        {"terminate": "false", "csrf": "forged"},
    ]
    for form in forms:
        response = page.request.post(f"/console/tasks/{task_id}/revoke", form=form)
        assert response.status == 403
        assert "no valid token of your session" in response.text()
    assert ledger_record(task_id, "PENDING").state == "PENDING"


def test_the_main_pages_render_and_sign_out_ends_the_session(rig: Rig, page: Page) -> None:
    expect(page.locator("#queues tr[data-queue=cleanup]")).to_have_class("flagged")
    rig.shot(page, "overview")
    page.click("nav >> text=Tasks")
    expect(page.locator("#tasks tbody tr").first).to_be_visible()
    rig.shot(page, "tasks")
    page.click("nav >> text=Workers")
    expect(page.locator("#workers")).to_contain_text("sync@test")
    rig.shot(page, "workers")
    page.click("nav >> text=Dead letters")
    expect(page.locator("main")).to_contain_text("No dead letter is kept")
    page.click("#sign-out")
    expect(page.locator(".notice")).to_have_text("signed out")
    page.goto("/console/workers")
    expect(page.locator("h1")).to_have_text("Sign in")
