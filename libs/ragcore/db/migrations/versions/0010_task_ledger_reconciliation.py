"""the task ledger's reconciliation: when and why a task was published again, its work list index

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_task_ledger_unfinished"
UNFINISHED = "state IN ('PENDING', 'RETRY', 'STARTED')"


def upgrade() -> None:
    # Nullable, no default: instant on PostgreSQL, whatever the ledger's size.
    op.add_column("task_ledger", sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("task_ledger", sa.Column("reconcile_reason", sa.String(32), nullable=True))
    where = sa.text(UNFINISHED)
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: workers keep writing the ledger while a large one is indexed.
        with op.get_context().autocommit_block():
            op.create_index(INDEX, "task_ledger", ["sent_at", "task_id"], postgresql_where=where,
                            postgresql_concurrently=True)
    else:
        op.create_index(INDEX, "task_ledger", ["sent_at", "task_id"], sqlite_where=where)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="task_ledger")
    with op.batch_alter_table("task_ledger") as batch_op:
        batch_op.drop_column("reconcile_reason")
        batch_op.drop_column("reconciled_at")
