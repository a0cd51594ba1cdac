"""the newest applied sync event per document (stale events are dropped); the usage hours reported

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-30 20:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Starts empty: until a document's next event is applied, nothing of it counts as stale.
    op.create_table(
        "sync_documents",
        sa.Column("document_id", sa.String(length=512), nullable=False),
        sa.Column("applied_occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("document_id"),
    )
    # Starts empty: the first report after the upgrade is of the last reportable hour only.
    op.create_table(
        "usage_reports",
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("period_start"),
    )


def downgrade() -> None:
    op.drop_table("usage_reports")
    op.drop_table("sync_documents")
