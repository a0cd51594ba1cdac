"""the trace context of work that continues later: a message's reports, a delivery's re-drives

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows written with tracing off (and every row before this revision) have none.
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))
    with op.batch_alter_table("failed_deliveries") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("failed_deliveries") as batch:
        batch.drop_column("traceparent")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("traceparent")
