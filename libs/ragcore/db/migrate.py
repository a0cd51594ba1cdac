"""Schema migrations (Alembic): `python -m ragcore.db.migrate [alembic command ...]`, default
`upgrade head`.

Every Alembic command works (`current`, `history`, `downgrade base`, `check`,
`revision --autogenerate -m "..." --rev-id 0002`); the database URL comes from
RAGCORE_DATABASE_URL (ragcore settings) unless `--url` is given. No alembic.ini: the
configuration is built here, so the migration job needs nothing beside its pex.
"""

from __future__ import annotations

import logging
import sys

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import CommandLine, Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from ragcore.db.migrations import SCRIPT_LOCATION
from ragcore.db.models import Base
from ragcore.logs import configure_logging
from ragcore.settings import get_settings

log = logging.getLogger(__name__)

#: How migrations and the check of an unversioned schema compare a database with the models.
COMPARE_OPTIONS = {"compare_type": True, "compare_server_default": True}


class SchemaMismatch(RuntimeError):
    """The database has ragcore tables but no migration version, and they differ from the models."""


def database_url(config: Config) -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def migration_engine(url: str) -> Engine:
    """One short-lived connection at a time, not the deployables' pool: a migration runs once."""
    parsed = make_url(url)
    # as ragcore.db.session: psycopg 3 is the installed driver
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, poolclass=NullPool)


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for `url` (default: the configured database)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # ConfigParser interpolation would read "%" in a password as a reference.
    config.set_main_option(
        "sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%")
    )
    return config


def adopt_unversioned_schema(config: Config) -> bool:
    """Stamp head on a database whose tables a deployable made (`create_schema`) before any
    migration.

    Deployables created missing tables at start before revision 0011 (now they refuse a database
    behind their code): a database they made, or one from before migrations existed, has every
    table and no version, and `upgrade` would fail on "table exists". When that schema is exactly
    the models' (= head's), it is adopted; when it differs, nothing is guessed: SchemaMismatch says
    what differs.
    """
    engine = migration_engine(database_url(config))
    try:
        with engine.connect() as conn:
            if MigrationContext.configure(conn).get_current_revision() is not None:
                return False
            if not set(inspect(conn).get_table_names()) & set(Base.metadata.tables):
                return False
            differences = compare_metadata(
                MigrationContext.configure(conn, opts=COMPARE_OPTIONS), Base.metadata
            )
    finally:
        engine.dispose()
    if differences:
        raise SchemaMismatch(
            "the database has ragcore tables but no migration version, and differs from the models "
            f"(first differences: {differences[:5]}); "
            "bring it to a known revision and `stamp` it by hand"
        )
    log.warning("the database has the models' tables but no migration version: stamping it at head")
    command.stamp(config, "head")
    return True


def upgrade(url: str | None = None, revision: str = "head") -> None:
    config = alembic_config(url)
    if revision == "head":
        adopt_unversioned_schema(config)
    command.upgrade(config, revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    url = None
    if argv[:1] == ["--url"] and len(argv) >= 2:
        url, argv = argv[1], argv[2:]
    cli = CommandLine(prog="python -m ragcore.db.migrate [--url URL]")
    options = cli.parser.parse_args(argv or ["upgrade", "head"])
    configure_logging("migrate", get_settings().log_level)
    config = alembic_config(url)
    if options.cmd[0] is command.upgrade and options.revision == "head" and not options.sql:
        try:
            adopt_unversioned_schema(config)
        except SchemaMismatch as exc:
            sys.exit(f"migrate: {exc}")
    cli.run_cmd(config, options)


if __name__ == "__main__":
    main()
