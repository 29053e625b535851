"""Redeem options, coupons issued by the built-in issuer, and orders whose points were awarded.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _key(length: int) -> sa.types.TypeEngine[str]:
    # Bytewise ("C") comparison on PostgreSQL, like SQLite's default, so ordering agrees.
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _time() -> sa.types.TypeEngine[object]:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "redeem_options",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("id", _key(24), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("coupon", sa.Text(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("modified_at", _time(), nullable=False),
        sa.CheckConstraint("points > 0", name="points_positive"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.PrimaryKeyConstraint("tenant", "id", name="pk_redeem_options"),
    )
    op.create_index("ix_redeem_options_order", "redeem_options", ["tenant", "created_at", "id"])
    op.create_table(
        "coupons",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("code", _key(255), nullable=False),
        sa.Column("customer_id", _key(255), nullable=False),
        sa.Column("redemption_id", _key(255), nullable=False),
        sa.Column("redeem_option_id", _key(24), nullable=False),
        sa.Column("site_code", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant", "redemption_id"],
            ["redemptions.tenant", "redemptions.id"],
            name="fk_coupons_redemptions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant", "code", name="pk_coupons"),
        sa.UniqueConstraint("tenant", "redemption_id", name="uq_coupons_tenant_redemption_id"),
    )
    op.create_index(
        "ix_coupons_customer_order", "coupons", ["tenant", "customer_id", "created_at", "code"]
    )
    op.create_table(
        "awarded_orders",
        sa.Column("tenant", _key(16), nullable=False),
        sa.Column("order_id", _key(255), nullable=False),
        sa.Column("customer_id", _key(255), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("lot_id", _key(255), nullable=True),
        sa.Column("created_at", _time(), nullable=False),
        sa.CheckConstraint("points >= 0", name="points_not_negative"),
        sa.PrimaryKeyConstraint("tenant", "order_id", name="pk_awarded_orders"),
    )


def downgrade() -> None:
    op.drop_table("awarded_orders")
    op.drop_index("ix_coupons_customer_order", table_name="coupons")
    op.drop_table("coupons")
    op.drop_index("ix_redeem_options_order", table_name="redeem_options")
    op.drop_table("redeem_options")
