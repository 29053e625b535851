"""The ledger: accounts, lots, redemptions and which redemption drew from which lot.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _key(length: int) -> sa.types.TypeEngine[str]:
    # Bytewise ("C") comparison on PostgreSQL, like SQLite's default, so ordering agrees.
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _time() -> sa.types.TypeEngine[object]:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("customer_id", _key(255), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "customer_id", name="pk_accounts"),
    )
    op.create_table(
        "lots",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("id", _key(255), nullable=False),
        sa.Column("customer_id", _key(255), nullable=False),
        sa.Column("reference_id", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("used_points", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("valid_until", _time(), nullable=False),
        sa.Column("all_points_after_creation", sa.BigInteger(), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.CheckConstraint("points > 0", name="points_positive"),
        sa.CheckConstraint("used_points >= 0 AND used_points <= points", name="used_within_points"),
        sa.ForeignKeyConstraint(
            ["tenant", "customer_id"],
            ["accounts.tenant", "accounts.customer_id"],
            name="fk_lots_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_lots"),
    )
    op.create_index("ix_lots_customer_order", "lots", ["tenant", "customer_id", "created_at", "id"])
    op.create_index(
        "ix_lots_customer_open",
        "lots",
        ["tenant", "customer_id", "created_at", "id"],
        postgresql_where=sa.text("used_points < points"),
        sqlite_where=sa.text("used_points < points"),
    )
    op.create_table(
        "redemptions",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("id", _key(255), nullable=False),
        sa.Column("customer_id", _key(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("all_points_after_creation", sa.BigInteger(), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.CheckConstraint("points > 0", name="points_positive"),
        sa.ForeignKeyConstraint(
            ["tenant", "customer_id"],
            ["accounts.tenant", "accounts.customer_id"],
            name="fk_redemptions_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_redemptions"),
    )
    op.create_index(
        "ix_redemptions_customer_order",
        "redemptions",
        ["tenant", "customer_id", "created_at", "id"],
    )
    op.create_table(
        "lot_usages",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("lot_id", _key(255), nullable=False),
        sa.Column("redemption_id", _key(255), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.CheckConstraint("points > 0", name="points_positive"),
        sa.ForeignKeyConstraint(
            ["tenant", "lot_id"],
            ["lots.tenant", "lots.id"],
            name="fk_lot_usages_lots",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "redemption_id"],
            ["redemptions.tenant", "redemptions.id"],
            name="fk_lot_usages_redemptions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant", "lot_id", "redemption_id", name="pk_lot_usages"),
    )
    op.create_index("ix_lot_usages_redemption", "lot_usages", ["tenant", "redemption_id"])


def downgrade() -> None:
    op.drop_table("lot_usages")
    op.drop_table("redemptions")
    op.drop_table("lots")
    op.drop_table("accounts")
