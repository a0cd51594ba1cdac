"""usage hours keep the revision and digest they were sent under; notification keys with their
content's digest; user statistics counted incrementally (messages.stats_counted_at) and the tier's
window read by (user_id, created_at)

Revision ID: 0011
Revises: 0012
Create Date: 2026-12-02 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Hours sent before: revision 0 (the period's key), digest unknown, so a recomputation of
    # one goes out as revision 1.
    with op.batch_alter_table("usage_reports") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("digest", sa.String(length=64), nullable=True))
    with op.batch_alter_table("usage_reports") as batch:
        batch.alter_column("revision", server_default=None)
    op.create_table(
        "notification_keys",
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("user_statistics") as batch:
        batch.add_column(
            sa.Column(
                "total_processing_time_ms", sa.Double(), nullable=False, server_default="0"
            )
        )
    with op.batch_alter_table("user_statistics") as batch:
        batch.alter_column("total_processing_time_ms", server_default=None)
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("stats_counted_at", sa.DateTime(timezone=True), nullable=True))
    # Every message so far is counted once, here: the statistics are rebuilt from them, exactly.
    op.execute("UPDATE messages SET stats_counted_at = CURRENT_TIMESTAMP")
    op.execute("DELETE FROM user_statistics")
    op.execute(
        "INSERT INTO user_statistics (user_id, total_queries, total_tokens, "
        "total_processing_time_ms, avg_processing_time_ms, last_query_at, updated_at) "
        "SELECT user_id, COUNT(*), COALESCE(SUM(tokens_used), 0), "
        "COALESCE(SUM(processing_time_ms), 0), COALESCE(AVG(processing_time_ms), 0), "
        "MAX(created_at), CURRENT_TIMESTAMP FROM messages GROUP BY user_id"
    )
    op.create_index(
        "ix_messages_uncounted",
        "messages",
        ["user_id"],
        postgresql_where=sa.text("stats_counted_at IS NULL"),
        sqlite_where=sa.text("stats_counted_at IS NULL"),
    )
    op.create_index("ix_messages_user_id_created_at", "messages", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_user_id_created_at", table_name="messages")
    op.drop_index("ix_messages_uncounted", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("stats_counted_at")
    with op.batch_alter_table("user_statistics") as batch:
        batch.drop_column("total_processing_time_ms")
    op.drop_table("notification_keys")
    with op.batch_alter_table("usage_reports") as batch:
        batch.drop_column("digest")
        batch.drop_column("revision")
