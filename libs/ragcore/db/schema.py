"""The schema's revision: the one this code needs, the one a database has, and the shortcut that
gives tests and development the models' schema at that revision.

Deployables never create or alter the schema: the migration job (`python -m ragcore.db.migrate`) is
its only writer, and a deployable refuses to start on a database behind its code (`behind`).
"""

from __future__ import annotations

import logging

from alembic import command
from alembic.migration import MigrationContext
from sqlalchemy.exc import OperationalError

from ragcore.db import migrate
from ragcore.db.models import Base
from ragcore.db.session import get_engine

log = logging.getLogger(__name__)

#: The migration this code's models are (tests/integration/migrations_test.py: it is the head).
REVISION = "0011"
#: How an operator brings the database to it (the migration job's pex runs the same module).
MIGRATE = "python -m ragcore.db.migrate"


def current_revision(url: str | None = None) -> str | None:
    """The database's migration revision; None for a database no migration ran on."""
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def behind(url: str | None = None) -> str | None:
    """What to do when the database is behind this code, else None.

    Revisions are numbered ("0008"): a database at a later one (the migration job of a newer version
    ran first, as an upgrade does) serves this code too, since migrations only add. A database that
    cannot be reached is not judged here (logged): the deployable's own retries handle an outage.
    """
    try:
        found = current_revision(url)
    except OperationalError as exc:
        log.warning("database unreachable at start-up, its schema revision is unchecked: %s", exc)
        return None
    if found is not None and found.isdigit() and int(found) >= int(REVISION):
        return None
    where = f"is at migration revision {found}" if found else "has no migration revision"
    return (
        f"the database {where} and this version needs revision {REVISION}: run the migration job "
        f"first (`{MIGRATE}`, which is `alembic upgrade head`), then start this again"
    )


def create_schema(url: str | None = None) -> None:
    """The models' tables, stamped at `REVISION`: what the migration job leaves, in one step, for
    tests and development tools (never a deployable)."""
    Base.metadata.create_all(get_engine(url))
    command.stamp(migrate.alembic_config(url or None), REVISION)
