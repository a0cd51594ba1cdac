"""full sync checkpoints keep the sync generation instead of every page's point ids

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A checkpoint without a generation cannot be resumed: its sync starts again at the first page.
    op.execute("DELETE FROM full_sync_pages")
    with op.batch_alter_table("full_sync_pages") as batch:
        batch.drop_column("point_ids")
        batch.add_column(sa.Column("generation", sa.BigInteger(), nullable=False))


def downgrade() -> None:
    op.execute("DELETE FROM full_sync_pages")
    with op.batch_alter_table("full_sync_pages") as batch:
        batch.drop_column("generation")
        batch.add_column(sa.Column("point_ids", sa.JSON(), nullable=False))
