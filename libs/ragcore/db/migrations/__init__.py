"""Alembic migrations of the ragcore database; run them with `python -m ragcore.db.migrate`."""

from pathlib import Path

#: Alembic's script location: env.py, script.py.mako and versions/ beside this file.
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
