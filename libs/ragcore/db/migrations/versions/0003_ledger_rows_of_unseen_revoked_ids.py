"""the ledger keeps ids revoked before any worker received them: name and queue may be unknown

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_ledger", schema=None) as batch_op:
        batch_op.alter_column("name", existing_type=sa.String(length=128), nullable=True)
        batch_op.alter_column("queue", existing_type=sa.String(length=32), nullable=True)


def downgrade() -> None:
    # The older schema cannot say "unknown": such rows keep their revocation under a placeholder.
    op.execute(sa.text("UPDATE task_ledger SET name = 'unknown' WHERE name IS NULL"))
    op.execute(sa.text("UPDATE task_ledger SET queue = 'unknown' WHERE queue IS NULL"))
    with op.batch_alter_table("task_ledger", schema=None) as batch_op:
        batch_op.alter_column("name", existing_type=sa.String(length=128), nullable=False)
        batch_op.alter_column("queue", existing_type=sa.String(length=32), nullable=False)
