"""full sync checkpoints: the pages a full sync has applied (full_sync_pages)

Revision ID: 0006
Revises: 0002
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "full_sync_pages",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("next_cursor", sa.Text(), nullable=True),
        sa.Column("copied", sa.Integer(), nullable=False),
        sa.Column("point_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "page"),
    )


def downgrade() -> None:
    op.drop_table("full_sync_pages")
