"""What the sync keeps in `sync_state`: the generation every write to Qdrant tags its points with,
and the incremental sync's high-water mark."""

from __future__ import annotations

from sqlalchemy import update

from ragcore.clients.ingest import Page
from ragcore.db import insert_for, session_scope
from ragcore.db.models import SyncState
from ragcore.query.cache import bump_data_version
from services.sync.copier import CopyReport

INCREMENTAL = "incremental"
#: The SyncState row whose `version` is the sync generation every write to Qdrant tags points with.
GENERATION = "generation"


def current_generation() -> int:
    """The sync generation writes tag their points with; 0 until the first full sync."""
    with session_scope() as session:
        state = session.get(SyncState, GENERATION)
        return state.version if state else 0


def begin_generation() -> int:
    """A new generation, durably, before a full sync writes anything: later writes carry it."""
    with session_scope() as session:
        insert = insert_for(session)
        first = insert(SyncState).values(key=GENERATION, version=0).on_conflict_do_nothing()
        session.execute(first)
        row = update(SyncState).where(SyncState.key == GENERATION)
        session.execute(row.values(version=SyncState.version + 1))
        state = session.get(SyncState, GENERATION)
        assert state is not None
        return state.version


def bump_for_page(page: Page, _: CopyReport) -> None:
    """A page Qdrant applied may change a cached answer's sources: the data version moves with the
    pages, not only at the sync's end (a full sync runs for minutes)."""
    if page.items:
        with session_scope() as session:
            bump_data_version(session)


def save_mark(report: CopyReport, changed: bool) -> None:
    """Store the incremental high-water mark, and bump the data version if Qdrant changed."""
    with session_scope() as session:
        state = session.get(SyncState, INCREMENTAL) or session.merge(SyncState(key=INCREMENTAL))
        if report.latest is not None and (
            state.high_water_mark is None or report.latest >= state.high_water_mark
        ):
            same_mark = state.high_water_mark == report.latest
            state.mark_ids = sorted(
                report.latest_ids | (set(state.mark_ids or []) if same_mark else set())
            )
            state.high_water_mark = report.latest
        if changed:
            bump_data_version(session)
