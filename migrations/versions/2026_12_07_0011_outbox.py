"""The outbox: work that must follow a committed write, recorded in the write's transaction
and done exactly once by whichever process holds its lease (outbox.py). An idempotency key may
now be claimed before its answer is known: ``status`` and ``body`` are NULL while the request
that claimed it, or the outbox after it, is still at work.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("idempotency_keys", "status", nullable=True)
    op.alter_column("idempotency_keys", "body", nullable=True)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("tenant", sa.String(16, collation="C"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index(
        "ix_outbox_due",
        "outbox",
        ["run_after"],
        postgresql_where=sa.text("done_at IS NULL"),
    )
    op.create_index("ix_outbox_done_at", "outbox", ["done_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_done_at", table_name="outbox")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_table("outbox")
    op.execute("DELETE FROM idempotency_keys WHERE status IS NULL")
    op.alter_column("idempotency_keys", "body", nullable=False)
    op.alter_column("idempotency_keys", "status", nullable=False)
