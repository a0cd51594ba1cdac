"""The database: tables and sessions."""

from ragcore.db.models import Base, utcnow
from ragcore.db.schema import create_schema
from ragcore.db.session import (
    KeptConnection,
    Sessions,
    begin_immediate,
    get_engine,
    insert_for,
    reset_engines,
    rows_affected,
    session_scope,
)

__all__ = [
    "Base",
    "KeptConnection",
    "Sessions",
    "begin_immediate",
    "create_schema",
    "get_engine",
    "insert_for",
    "reset_engines",
    "rows_affected",
    "session_scope",
    "utcnow",
]
