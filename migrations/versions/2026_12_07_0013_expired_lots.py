"""A write's cost no longer grows with the customer's history.

Every write summed the customer's open lots to find its balance: a customer with 100,000 open
lots paid for 100,000 rows on each addition and redemption. The account already stores the
balance its last write left and the window it holds for (revision 0006); every write now reads
it there (rewardpoints_available). When lots have expired since, only they are read, through the
index of the lots with points left by validUntil, and the next expiry is one probe of it.

A redemption walks its lots oldest first through the index of the lots to draw from. Lots that
expired with points left stayed in it for good, and each draw stepped over them; a write now
marks such lots ``expired`` (rewardpoints_expire), and the index leaves them out. The lots
already past their validUntil at their customer's last write are marked here; any others the
next write of their customer marks.

The changed functions are installed from frozen copies (migrations/sql/0013/), the others stay
revision 0012's; rewardpoints_available answers one column more, so it is dropped first. The
downgrade installs revision 0012's copies again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_FROZEN = Path(__file__).parents[1] / "sql" / "0013"
_FROZEN_0012 = Path(__file__).parents[1] / "sql" / "0012"

_AVAILABLE = "rewardpoints_available(varchar, varchar, timestamptz)"
_EXPIRE = "rewardpoints_expire(varchar, varchar, timestamptz)"

_TABLES_UP = """
ALTER TABLE lots ADD COLUMN expired boolean NOT NULL DEFAULT false;
UPDATE lots l SET expired = true
  FROM accounts a
 WHERE a.tenant = l.tenant AND a.customer_id = l.customer_id
   AND NOT l.used_up AND l.valid_until <= a.active_since;
DROP INDEX ix_lots_customer_open;
CREATE INDEX ix_lots_customer_open ON lots (tenant, customer_id, created_at, id)
    WHERE NOT used_up AND NOT expired;
"""

_TABLES_DOWN = """
DROP INDEX ix_lots_customer_open;
CREATE INDEX ix_lots_customer_open ON lots (tenant, customer_id, created_at, id)
    WHERE NOT used_up;
ALTER TABLE lots DROP COLUMN expired;
"""


def _statements(script: str) -> list[str]:
    """The statements of a script of plain DDL and DML (no function bodies), one by one."""
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]


def _install(sources: list[Path]) -> None:
    """These functions; a plain SQL function's body may name functions installed after it."""
    op.execute("SET check_function_bodies = off")
    for source in sorted(sources):
        op.execute(source.read_text())
    op.execute("RESET check_function_bodies")


def upgrade() -> None:
    for statement in _statements(_TABLES_UP):
        op.execute(statement)
    op.execute(f"DROP FUNCTION {_AVAILABLE}")
    _install(list(_FROZEN.glob("*.sql")))


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {_EXPIRE}")
    op.execute(f"DROP FUNCTION {_AVAILABLE}")
    changed = [_FROZEN_0012 / source.name for source in _FROZEN.glob("*.sql")]
    _install([source for source in changed if source.exists()])
    for statement in _statements(_TABLES_DOWN):
        op.execute(statement)
