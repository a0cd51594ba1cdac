"""the message row is the intent of its reports (messages.reported_at); the outbox table goes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 16:40:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNREPORTED = sa.text("reported_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True))
    # Messages were reported through the outbox; those whose report it had not published yet stay
    # unreported, so the relay sends them (nothing is lost with the outbox table).
    bind = op.get_bind()
    waiting = {
        (json.loads(kwargs) if isinstance(kwargs, str) else kwargs).get("message_id")
        for (kwargs,) in bind.execute(sa.text(
            "SELECT kwargs FROM task_outbox WHERE published_at IS NULL AND task_name = 'send_query_result_to_users'"
        ))
    }
    bind.execute(sa.text("UPDATE messages SET reported_at = created_at"))
    for message_id in waiting - {None}:
        bind.execute(sa.text("UPDATE messages SET reported_at = NULL WHERE id = :id"), {"id": message_id})
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_unreported", ["created_at"], unique=False,
                              postgresql_where=_UNREPORTED, sqlite_where=_UNREPORTED)
    with op.batch_alter_table("task_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_outbox_published_at"))
    op.drop_table("task_outbox")


def downgrade() -> None:
    op.create_table(
        "task_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("task_name", sa.String(length=128), nullable=False),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id"),
    )
    with op.batch_alter_table("task_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_outbox_published_at"), ["published_at"], unique=False)
    # Unreported messages are not carried back into the outbox: the relay of this revision sends them
    # before a downgrade, or they stay unreported.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_unreported")
        batch_op.drop_column("reported_at")
