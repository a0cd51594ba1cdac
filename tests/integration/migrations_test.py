"""The Alembic migrations build exactly the models' schema from any earlier revision, and unwind to
an empty database; a deployable refuses a schema behind its code."""

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from ragcore.db import Base, migrate, schema
from ragcore.tasks.contracts import Queue
from ragcore_dev.processes import wait_until
from ragcore_dev.servers import postgres_database
from tests.support.stack import Stack


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty PostgreSQL database (production) and an empty SQLite file (the local stack)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ragcore.db'}"
        return
    with postgres_database() as url:
        yield url


def _engine(url: str) -> Engine:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def test_upgrade_to_head_builds_exactly_the_models_schema_and_downgrade_removes_it(
    empty_database: str,
) -> None:
    head = ScriptDirectory.from_config(migrate.alembic_config(empty_database)).get_current_head()
    engine = _engine(empty_database)
    try:
        migrate.upgrade(empty_database)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert context.get_current_revision() == head
            assert set(inspect(conn).get_table_names()) == set(Base.metadata.tables) | {
                "alembic_version"
            }
            assert compare_metadata(context, Base.metadata) == []

        migrate.downgrade(empty_database, "base")
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() is None
            assert inspect(conn).get_table_names() == ["alembic_version"]
    finally:
        engine.dispose()


def test_the_migration_command_defaults_to_upgrade_head(empty_database: str) -> None:
    migrate.main(["--url", empty_database])
    engine = _engine(empty_database)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == set(Base.metadata.tables) | {
                "alembic_version"
            }
    finally:
        engine.dispose()


def test_a_schema_made_by_a_deployable_before_the_migration_job_is_adopted_at_head(
    empty_database: str,
) -> None:
    engine = _engine(empty_database)
    try:
        Base.metadata.create_all(engine)  # what deployables did at start before 0011
        migrate.upgrade(empty_database)
        head = ScriptDirectory.from_config(
            migrate.alembic_config(empty_database)
        ).get_current_head()
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head
    finally:
        engine.dispose()


def test_an_unversioned_schema_that_differs_from_the_models_is_refused_not_stamped(
    empty_database: str,
) -> None:
    engine = _engine(empty_database)
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE failed_deliveries"))
        with pytest.raises(migrate.SchemaMismatch, match="failed_deliveries"):
            migrate.upgrade(empty_database)
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() is None
    finally:
        engine.dispose()


def _revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_a_database_at_a_later_versions_revision_serves_this_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'later.db'}"
    migrate.upgrade(url)
    assert schema.behind(url) is None
    engine = _engine(url)
    try:
        with engine.begin() as conn:  # the migration job of a newer version ran first
            conn.execute(text("UPDATE alembic_version SET version_num = 'a-later-one'"))
        assert schema.behind(url) is None
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE alembic_version SET version_num = '{_revisions()[0]}'"))
        assert "needs revision" in (schema.behind(url) or "")
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_head_works_from_every_earlier_revision(backend: str, tmp_path: Path) -> None:
    for revision in _revisions()[:-1]:
        with ExitStack() as cleanup:
            if backend == "sqlite":
                url = f"sqlite:///{tmp_path / f'at-{revision}.db'}"
            else:
                url = cleanup.enter_context(postgres_database())
            migrate.upgrade(url, revision)
            migrate.main(["--url", url])  # the migration job: upgrade head
            engine = _engine(url)
            cleanup.callback(engine.dispose)
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts=migrate.COMPARE_OPTIONS)
                assert context.get_current_revision() == schema.revision(), revision
                assert compare_metadata(context, Base.metadata) == [], revision


def test_a_new_worker_refuses_an_old_schema_naming_the_revision_and_the_command(
    stack: Stack,
) -> None:
    with postgres_database() as url:
        old = _revisions()[-2]
        migrate.upgrade(url, old)
        worker = stack.start("services.sync.worker", database_url=url)
        wait_until(lambda: not worker.running, 60, "the worker to refuse the old schema")
        assert (
            f"the database is at migration revision {old} and this version needs revision "
            f"{schema.revision()}: run the migration job first (`python -m ragcore.db.migrate`"
        ) in worker.logs()
        engine = _engine(url)
        try:
            with engine.connect() as conn:  # it created and altered nothing
                assert MigrationContext.configure(conn).get_current_revision() == old
        finally:
            engine.dispose()
        migrate.upgrade(url)
        stack.start_worker(Queue.SYNC, name="migrated", database_url=url)
