"""The one place the console asks for dead letters: another change is building them
(`ragcore.deadletters`); until that module exists, the console says they are not available yet."""

from __future__ import annotations

import importlib.util

from sqlalchemy.orm import Session


def available() -> bool:
    return importlib.util.find_spec("ragcore.deadletters") is not None


def count(session: Session) -> int | None:
    """How many dead letters are kept, or None while the console cannot read them."""
    # Wired when ragcore.deadletters lands: its count of kept dead letters.
    return None
