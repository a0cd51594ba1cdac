"""The schema's revision: the one this code needs, the one a database has, and the shortcut that
gives tests and development the models' schema at that revision.

Deployables never create or alter the schema: the migration job (`python -m ragcore.db.migrate`) is
its only writer, and a deployable refuses to start on a database behind its code (`behind`).
"""

from __future__ import annotations

import logging
from functools import lru_cache

from alembic import command
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import OperationalError

from ragcore.db import migrate
from ragcore.db.migrations import SCRIPT_LOCATION
from ragcore.db.models import Base
from ragcore.db.session import get_engine

log = logging.getLogger(__name__)

#: How an operator brings the database to it (the migration job's pex runs the same module).
MIGRATE = "python -m ragcore.db.migrate"


@lru_cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(SCRIPT_LOCATION)


def revision() -> str:
    """The migration this code's models are: the head of the migrations it ships."""
    head = _script().get_current_head()
    assert head is not None, "the migrations have one head"
    return head


def current_revision(url: str | None = None) -> str | None:
    """The database's migration revision; None for a database no migration ran on."""
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def behind(url: str | None = None) -> str | None:
    """What to do when the database is behind this code, else None.

    Behind: no revision, or one of this code's migrations other than its head. A revision this code
    does not know is a later version's (its migration job ran first, as an upgrade does): it serves
    this code too, since migrations only add. A database that cannot be reached is not judged here
    (logged): the deployable's own retries handle an outage.
    """
    try:
        found = current_revision(url)
    except OperationalError as exc:
        log.warning("database unreachable at start-up, its schema revision is unchecked: %s", exc)
        return None
    needed = revision()
    known = {r.revision for r in _script().walk_revisions()}
    if found == needed or (found is not None and found not in known):
        return None
    where = f"is at migration revision {found}" if found else "has no migration revision"
    return (
        f"the database {where} and this version needs revision {needed}: run the migration job "
        f"first (`{MIGRATE}`, which is `alembic upgrade head`), then start this again"
    )


def create_schema(url: str | None = None) -> None:
    """The models' tables, stamped at `revision()`: what the migration job leaves, in one step, for
    tests and development tools (never a deployable)."""
    Base.metadata.create_all(get_engine(url))
    command.stamp(migrate.alembic_config(url or None), revision())
