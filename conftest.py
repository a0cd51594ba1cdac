"""Fixtures for the unit tests that sit next to their code, anywhere in the repository."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from ragcore.db import create_schema, get_engine, session_scope


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[Callable[[], AbstractContextManager[Session]]]:
    """`with sessions() as session:` on a fresh SQLite database with the schema."""
    url = f"sqlite:///{tmp_path}/unit.db"
    create_schema(url)
    yield partial(session_scope, url)
    get_engine(url).dispose()
