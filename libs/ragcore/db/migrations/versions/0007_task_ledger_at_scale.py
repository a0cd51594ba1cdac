"""the task ledger at scale: history indexes in page order, a covering window index, run_seconds

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-30 21:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, columns, INCLUDEd columns on PostgreSQL)
NEW_INDEXES: tuple[tuple[str, list[str], list[str]], ...] = (
    ("ix_task_ledger_name_sent_at", ["name", "sent_at", "task_id"], []),
    ("ix_task_ledger_state_sent_at", ["state", "sent_at", "task_id"], []),
    ("ix_task_ledger_sent_at_task_id", ["sent_at", "task_id"], ["name", "state", "run_seconds"]),
)
#: What the new ones replace: each is a prefix of one of them.
OLD_INDEXES = (
    ("ix_task_ledger_name", ["name"]),
    ("ix_task_ledger_state", ["state"]),
    ("ix_task_ledger_sent_at", ["sent_at"]),
)


def upgrade() -> None:
    # Nullable, no default: instant on PostgreSQL, whatever the ledger's size. Rows finished before
    # the upgrade have none: /metrics' durations refill within one metrics window.
    op.add_column("task_ledger", sa.Column("run_seconds", sa.Double(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: workers keep writing the ledger while a large one is indexed.
        with op.get_context().autocommit_block():
            for name, columns, include in NEW_INDEXES:
                op.create_index(name, "task_ledger", columns, postgresql_include=include,
                                postgresql_concurrently=True)
    else:
        for name, columns, _ in NEW_INDEXES:
            op.create_index(name, "task_ledger", columns)
    for name, _ in OLD_INDEXES:
        op.drop_index(name, table_name="task_ledger")


def downgrade() -> None:
    for name, columns in OLD_INDEXES:
        op.create_index(name, "task_ledger", columns)
    for name, _, _ in NEW_INDEXES:
        op.drop_index(name, table_name="task_ledger")
    with op.batch_alter_table("task_ledger") as batch_op:
        batch_op.drop_column("run_seconds")
