"""Dead letters in the database (SQLite here; PostgreSQL in tests/integration/dead_letters_test.py):
the same poison counted on one row, bodies bounded, pages by cursor, totals, discard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragcore.db import create_schema, reset_engines, session_scope
from ragcore.deadletters import store
from ragcore.deadletters.store import Poison, Reason
from ragcore.settings import get_settings


@pytest.fixture(autouse=True)
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RAGCORE_DATABASE_URL", f"sqlite:///{tmp_path}/dead.db")
    get_settings.cache_clear()
    reset_engines()
    create_schema()
    yield
    get_settings.cache_clear()
    reset_engines()


def _poison(
    body: bytes, queue: str = "notifications", reason: Reason = Reason.UNDECODABLE
) -> Poison:
    return Poison(queue=queue, reason=reason, body=body, detail="not JSON")


def test_the_same_poison_again_raises_the_count_of_one_row_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger=store.__name__):
        for _ in range(3):
            store.record(_poison(b"\x00not json"))
        store.record(_poison(b"\x00not json", queue="user"))
    with session_scope() as session:
        rows, cursor = store.page(session, limit=10)
        counts = sorted((r.queue, r.count, r.body) for r in rows)
    assert counts == [("notifications", 3, b"\x00not json"), ("user", 1, b"\x00not json")]
    assert cursor is None
    assert len([r for r in caplog.records if r.getMessage().startswith("dead letter ")]) == 2


def test_a_large_body_is_kept_up_to_the_bound_with_its_whole_size() -> None:
    store.record(_poison(b"x" * (store.BODY_LIMIT * 3)))
    with session_scope() as session:
        [row], _ = store.page(session, limit=1)
    assert (len(row.body), row.body_bytes) == (store.BODY_LIMIT, store.BODY_LIMIT * 3)


def test_pages_follow_the_cursor_newest_first_and_filter_by_reason() -> None:
    for n in range(5):
        store.record(
            _poison(f"p{n}".encode(), reason=Reason.UNKNOWN_TASK if n % 2 else Reason.UNDECODABLE)
        )
    with session_scope() as session:
        first, cursor = store.page(session, limit=2)
        second, cursor2 = store.page(session, limit=2, before=cursor)
        third, end = store.page(session, limit=2, before=cursor2)
        unknown, _ = store.page(session, limit=10, reason=Reason.UNKNOWN_TASK)
        bodies = [r.body for r in (*first, *second, *third)]
        unknown_bodies = [r.body for r in unknown]
    assert bodies == [b"p4", b"p3", b"p2", b"p1", b"p0"] and end is None
    assert unknown_bodies == [b"p3", b"p1"]


def test_totals_count_letters_and_messages_and_a_discarded_letter_is_gone() -> None:
    store.record(_poison(b"a"))
    store.record(_poison(b"a"))
    store.record(_poison(b"b", reason=Reason.INVALID_ARGUMENTS))
    with session_scope() as session:
        assert store.totals(session) == [
            store.Totals("notifications", "invalid_arguments", 1, 1),
            store.Totals("notifications", "undecodable", 1, 2),
        ]
        [row, *_] = store.page(session, limit=1)[0]
        assert store.discard(session, row.id) and not store.discard(session, row.id)
        assert store.get(session, row.id) is None


def test_a_poison_the_database_cannot_take_is_logged_with_its_body_and_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RAGCORE_DATABASE_URL", "sqlite:////nonexistent-dir/dead.db")
    get_settings.cache_clear()
    reset_engines()
    with caplog.at_level("ERROR", logger=store.__name__):
        store.record(_poison(b"lost?"))
    [line] = [r.getMessage() for r in caplog.records]
    assert "not stored" in line and "b'lost?'" in line
