"""failed deliveries that wait for an automatic re-drive: failed_deliveries.next_attempt_at, waiting_since

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-30 20:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("failed_deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_failed_deliveries_due", ["status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    # Waiting deliveries become failed ones: an operator re-drives them, as before this revision.
    op.execute(sa.text("UPDATE failed_deliveries SET status = 'failed' WHERE status = 'waiting'"))
    with op.batch_alter_table("failed_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_failed_deliveries_due")
        batch_op.drop_column("waiting_since")
        batch_op.drop_column("next_attempt_at")
