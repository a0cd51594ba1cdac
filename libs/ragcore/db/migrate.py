"""Schema migrations (Alembic): `python -m ragcore.db.migrate [alembic command ...]`, default `upgrade head`.

Every Alembic command works (`current`, `history`, `downgrade base`, `check`,
`revision --autogenerate -m "..." --rev-id 0002`); the database URL comes from
RAGCORE_DATABASE_URL (ragcore settings) unless `--url` is given. No alembic.ini: the
configuration is built here, so the migration job needs nothing beside its pex.
"""

from __future__ import annotations

import sys

from alembic import command
from alembic.config import CommandLine, Config

from ragcore.db.migrations import SCRIPT_LOCATION
from ragcore.logging import configure_logging
from ragcore.settings import get_settings


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for `url` (default: the configured database)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # ConfigParser interpolation would read "%" in a password as a reference.
    config.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


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
    cli.run_cmd(alembic_config(url), options)


if __name__ == "__main__":
    main()
