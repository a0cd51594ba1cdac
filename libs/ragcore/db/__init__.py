"""The database: tables and sessions."""

from ragcore.db.models import Base, utcnow
from ragcore.db.session import create_schema, get_engine, reset_engines, session_scope

__all__ = ["Base", "create_schema", "get_engine", "reset_engines", "session_scope", "utcnow"]
