"""Alembic's environment: the URL comes from the config (set by ragcore.db.migrate) or settings."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import TypeDecorator

from ragcore.db.migrate import COMPARE_OPTIONS, database_url, migration_engine
from ragcore.db.models import Base

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our column types as their plain SQLAlchemy type: migrations never import models."""
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"  # script.py.mako imports sqlalchemy as sa
    return False


def _options() -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "render_item": render_item,
        **COMPARE_OPTIONS,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        "render_as_batch": True,
    }


def run_offline() -> None:
    """Emit SQL to stdout (`upgrade head --sql`) instead of connecting."""
    context.configure(url=database_url(config), literal_binds=True, **_options())
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = migration_engine(database_url(config))
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **_options())
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
