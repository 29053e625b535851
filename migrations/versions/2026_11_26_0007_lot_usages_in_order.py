"""Each lot's usages indexed in the order of its ``usedWith`` list.

A summary lists, for each lot, the redemptions that drew from it, in the order they did
(``created_at``, then the redemption's id). Read through the primary key
``(tenant, lot_id, redemption_id)``, every used lot's list had to be sorted: for a customer with
100,000 lots, and for summaryBatch's million, that sort was a sixth of PostgreSQL's work. Read
through ``(tenant, lot_id, created_at, redemption_id)`` the usages come in list order.

On PostgreSQL the index is built, and dropped by the downgrade, without blocking writes
(``CONCURRENTLY``), so either can run while the service does; an index left invalid by an
interrupted upgrade is dropped and built again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INDEX = "ix_lot_usages_lot_order"
_COLUMNS = "(tenant, lot_id, created_at, redemption_id)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
            op.execute(f"CREATE INDEX CONCURRENTLY {_INDEX} ON lot_usages {_COLUMNS}")
    else:
        op.execute(f"CREATE INDEX {_INDEX} ON lot_usages {_COLUMNS}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_INDEX}")
    else:
        op.execute(f"DROP INDEX {_INDEX}")
