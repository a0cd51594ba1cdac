"""the task ledger's history by queue and by worker in page order; the queues picture from an index

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-03 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, columns, INCLUDEd columns on PostgreSQL). Without them a queue or worker filter that
#: matches few rows read the sent_at index to its end (825 / 381 ms at 1M rows), and the console's
#: queues picture read the window's rows from the heap (docs/benchmarks.md, console pages).
INDEXES: tuple[tuple[str, list[str], list[str]], ...] = (
    ("ix_task_ledger_queue_sent_at", ["queue", "sent_at", "task_id"], ["started_at", "finished_at"]),
    ("ix_task_ledger_worker_sent_at", ["worker", "sent_at", "task_id"], []),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: workers keep writing the ledger while a large one is indexed.
        with op.get_context().autocommit_block():
            for name, columns, include in INDEXES:
                op.create_index(name, "task_ledger", columns, postgresql_include=include,
                                postgresql_concurrently=True)
    else:
        for name, columns, _ in INDEXES:
            op.create_index(name, "task_ledger", columns)


def downgrade() -> None:
    for name, _, _ in INDEXES:
        op.drop_index(name, table_name="task_ledger")
