"""Summary segments: stretches of a long summary's lists made once and read instead.

A summary lists every lot and redemption of the customer. For a customer with 100,000 lots
PostgreSQL read 100,000 stored items through the customer's index and wrote each one out as a
row of COPY, every time, although nearly all of them no longer change: a used-up lot and a
redemption change only when a reversal gives points back. ``summary_segments`` keeps such
stretches of a customer's lists, a fixed number of entries each, as the list items each after
a comma, so a summary reads ~100 rows instead of 100,000 (documents.py makes them when it reads
a summary, under the customer's lock).

A reversal changes the items of its redemption and of the lots it gives back to, so
``rewardpoints_reverse`` now deletes the segments holding them in its transaction (a frozen copy
of the package's source, migrations/sql/0014/). No other write changes an entry that a segment
may hold: new entries come after every entry of their customer (rewardpoints_entry_time),
redemptions draw from lots with points left only, and a customer's deletion takes its
segments with it.

The table starts empty (the summaries fill it); the downgrade drops it and reinstalls revision
0013's reversal.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_FROZEN = Path(__file__).parents[1] / "sql" / "0014"
_FROZEN_0013 = Path(__file__).parents[1] / "sql" / "0013"


def upgrade() -> None:
    op.create_table(
        "summary_segments",
        sa.Column("tenant", sa.String(16, collation="C"), nullable=False),
        sa.Column("customer_id", sa.String(255, collation="C"), nullable=False),
        sa.Column("list", sa.Text(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_id", sa.String(255, collation="C"), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_id", sa.String(255, collation="C"), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("items", sa.Text(), nullable=False),
        sa.CheckConstraint("list IN ('lots', 'redemptions')", name="known_list"),
        sa.CheckConstraint("entries > 0", name="entries_positive"),
        sa.ForeignKeyConstraint(
            ["tenant", "customer_id"],
            ["accounts.tenant", "accounts.customer_id"],
            name="fk_summary_segments_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant", "customer_id", "list", "first_at", "first_id", name="pk_summary_segments"
        ),
    )
    _install(_FROZEN)


def downgrade() -> None:
    op.execute((_FROZEN_0013 / "rewardpoints_reverse.sql").read_text())
    op.drop_table("summary_segments")


def _install(directory: Path) -> None:
    for source in sorted(directory.glob("*.sql")):
        op.execute(source.read_text())
