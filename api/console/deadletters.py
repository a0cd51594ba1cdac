"""The one place the console reads dead letters (`ragcore.deadletters`: messages a worker could
not run, kept for an operator): how many, a page of them, one discarded."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from ragcore import deadletters
from ragcore.db.models import DeadLetter

PAGE_SIZE = 50


def count(session: Session) -> int:
    """How many dead letters are kept."""
    return sum(t.letters for t in deadletters.totals(session))


def page(session: Session, before: int | None) -> tuple[Sequence[DeadLetter], int | None]:
    return deadletters.page(session, PAGE_SIZE, before=before)


def discard(session: Session, letter_id: int) -> bool:
    return deadletters.discard(session, letter_id)
