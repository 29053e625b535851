"""A journal of every ledger entry, reversals, deductions and debts.

Every write now records its entries in ``journal`` (rewardpoints_record.sql) with the balance
it leaves, its actor and its reason: history, balances in time, expiring points and the
liability report read it. The entries of the lots and redemptions written before are filled in
from them (kind ``chargeback`` for the lots of Emporix's chargeback text without a reference,
``added`` for the other lots, ``redeemed`` for the redemptions; no actor, no reason).

Redemptions may now be reversed (``reversals``; a redemption's ``reversed_points``; a lot's
``expired_returns``, the points given back to it after it had expired) and points deducted
(a redemption marked ``deducted``; what it could not draw is ``owed``, and the account's
``debt`` until the next lots pay it).

The write functions take an actor and a reason, so their signatures change: the functions
revision 0010 installed are dropped, and frozen copies of the package's sources installed
(migrations/sql/0012/). Stop the service of revision 0011 for the upgrade, as for 0010. The
downgrade refuses while there are reversals, deductions or debts, which revision 0011 cannot
hold; the journal goes with it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_FROZEN = Path(__file__).parents[1] / "sql" / "0012"
_FROZEN_0010 = Path(__file__).parents[1] / "sql" / "0010"

# The functions of revision 0010 whose signatures change here.
_OLD_FUNCTIONS = (
    "rewardpoints_add(varchar, varchar, varchar, boolean, text, text, bigint, timestamptz,"
    " integer, varchar)",
    "rewardpoints_add_lot(varchar, varchar, varchar, boolean, text, text, bigint, timestamptz,"
    " integer, varchar)",
    "rewardpoints_add_many(varchar[], varchar[], varchar[], boolean[], text[], text[], bigint[],"
    " timestamptz[], integer[], varchar[])",
    "rewardpoints_award_order(varchar, varchar, varchar, bigint, varchar, text, integer, varchar)",
    "rewardpoints_charge_back(varchar, varchar, varchar, text, bigint, integer, varchar)",
    "rewardpoints_create_customer(varchar, varchar, boolean, varchar, boolean, text, text,"
    " bigint, timestamptz, integer, varchar)",
    "rewardpoints_redeem(varchar, varchar, varchar, boolean, text, bigint, varchar)",
    "rewardpoints_redeem_many(varchar[], varchar[], varchar[], boolean[], text[], bigint[],"
    " varchar[])",
)

# The functions this revision installs that revision 0010 does not have, or has with another
# signature.
_NEW_FUNCTIONS = (
    "rewardpoints_add(varchar, varchar, varchar, boolean, text, text, bigint, timestamptz,"
    " integer, varchar, text, text)",
    "rewardpoints_add_lot(varchar, varchar, varchar, boolean, text, text, bigint, timestamptz,"
    " integer, varchar, text, text, text)",
    "rewardpoints_add_many(varchar[], varchar[], varchar[], boolean[], text[], text[], bigint[],"
    " timestamptz[], integer[], varchar[], text[], text[])",
    "rewardpoints_award_order(varchar, varchar, varchar, bigint, varchar, text, integer, varchar,"
    " text, text)",
    "rewardpoints_charge_back(varchar, varchar, varchar, text, bigint, integer, varchar, text)",
    "rewardpoints_create_customer(varchar, varchar, boolean, varchar, boolean, text, text,"
    " bigint, timestamptz, integer, varchar, text, text)",
    "rewardpoints_redeem(varchar, varchar, varchar, boolean, text, bigint, varchar, text, text)",
    "rewardpoints_redeem_many(varchar[], varchar[], varchar[], boolean[], text[], bigint[],"
    " varchar[], text[], text[])",
    "rewardpoints_available(varchar, varchar, timestamptz)",
    "rewardpoints_balance_at(varchar, varchar, timestamptz)",
    "rewardpoints_deduct(varchar, varchar, varchar, boolean, text, text, bigint, varchar,"
    " boolean, text, text, varchar, boolean)",
    "rewardpoints_draw(varchar, varchar, varchar, bigint, timestamptz, varchar)",
    "rewardpoints_draw_plan(varchar, varchar, bigint, timestamptz, varchar)",
    "rewardpoints_expiring_customers(varchar, timestamptz, timestamptz)",
    "rewardpoints_expiring_lots(varchar, varchar, timestamptz, timestamptz)",
    "rewardpoints_history(varchar, varchar, timestamptz, integer, timestamptz, integer, bigint,"
    " varchar, text[], timestamptz, timestamptz)",
    "rewardpoints_lapsed(bigint, bigint, bigint)",
    "rewardpoints_lapsed_between(varchar, varchar, timestamptz, timestamptz, varchar)",
    "rewardpoints_liability(varchar, timestamptz, integer)",
    "rewardpoints_preview_add(varchar, varchar, varchar, boolean, bigint, timestamptz, integer,"
    " varchar)",
    "rewardpoints_preview_redeem(varchar, varchar, varchar, boolean, bigint, varchar)",
    "rewardpoints_record(varchar, varchar, timestamptz, text, varchar, bigint, bigint, text,"
    " text, text)",
    "rewardpoints_reverse(varchar, varchar, varchar, boolean, varchar, bigint, text, text,"
    " varchar, boolean)",
    "rewardpoints_reverse_plan(varchar, varchar, varchar, bigint, timestamptz)",
    "rewardpoints_valid_until(timestamptz, timestamptz, integer)",
)

_TABLES_UP = """
ALTER TABLE accounts ADD COLUMN debt bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT ck_accounts_debt_not_negative CHECK (debt >= 0);
ALTER TABLE lots ADD COLUMN expired_returns bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT ck_lots_expired_returns_within CHECK (
        expired_returns >= 0 AND expired_returns <= points - used_points);
ALTER TABLE redemptions ADD COLUMN deducted boolean NOT NULL DEFAULT false,
    ADD COLUMN owed bigint NOT NULL DEFAULT 0,
    ADD COLUMN reversed_points bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT ck_redemptions_owed_within CHECK (owed >= 0 AND owed <= points),
    ADD CONSTRAINT ck_redemptions_reversed_within CHECK (
        reversed_points >= 0 AND reversed_points <= points);
CREATE INDEX ix_lots_customer_expiry ON lots (tenant, customer_id, valid_until, id)
    WHERE NOT used_up;
CREATE INDEX ix_redemptions_customer_owed ON redemptions (tenant, customer_id, created_at, id)
    WHERE owed > 0;
CREATE TABLE reversals (
    tenant varchar(16) COLLATE "C" NOT NULL,
    customer_id varchar(255) COLLATE "C" NOT NULL,
    id varchar(255) COLLATE "C" NOT NULL,
    redemption_id varchar(255) COLLATE "C" NOT NULL,
    points bigint NOT NULL,
    restored_points bigint NOT NULL,
    expired_points bigint NOT NULL,
    created_at timestamptz NOT NULL,
    request_hash varchar(64) NOT NULL,
    CONSTRAINT pk_reversals PRIMARY KEY (tenant, customer_id, id),
    CONSTRAINT ck_reversals_points_positive CHECK (points > 0),
    CONSTRAINT ck_reversals_parts CHECK (
        restored_points >= 0 AND expired_points >= 0
        AND restored_points + expired_points = points),
    CONSTRAINT fk_reversals_redemptions FOREIGN KEY (tenant, customer_id, redemption_id)
        REFERENCES redemptions (tenant, customer_id, id) ON DELETE CASCADE
);
CREATE TABLE journal (
    tenant varchar(16) COLLATE "C" NOT NULL,
    customer_id varchar(255) COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    kind text NOT NULL,
    entry_id varchar(255) COLLATE "C" NOT NULL,
    points bigint NOT NULL,
    balance_after bigint NOT NULL,
    reference_id text,
    reason text,
    actor text,
    CONSTRAINT pk_journal PRIMARY KEY (tenant, customer_id, created_at, seq),
    CONSTRAINT ck_journal_points_positive CHECK (points > 0),
    CONSTRAINT ck_journal_known_kind CHECK (kind IN (
        'added', 'chargeback', 'redeemed', 'reversed', 'deducted', 'expired')),
    CONSTRAINT fk_journal_accounts FOREIGN KEY (tenant, customer_id)
        REFERENCES accounts (tenant, customer_id) ON DELETE CASCADE
);
INSERT INTO journal (tenant, customer_id, created_at, kind, entry_id, points, balance_after,
                     reference_id)
SELECT e.tenant, e.customer_id, e.created_at, e.kind, e.id, e.points, e.balance_after,
       e.reference_id
  FROM (SELECT l.tenant, l.customer_id, l.created_at,
               CASE WHEN l.reference_id IS NULL
                     AND l.description = 'Chargeback - redeemed voucher could not be created.'
                    THEN 'chargeback' ELSE 'added' END AS kind,
               l.id, l.points, l.all_points_after_creation AS balance_after, l.reference_id,
               0 AS written
          FROM lots l
        UNION ALL
        SELECT r.tenant, r.customer_id, r.created_at, 'redeemed', r.id, r.points,
               r.all_points_after_creation, NULL, 1
          FROM redemptions r) AS e
 ORDER BY e.tenant, e.customer_id, e.created_at, e.written, e.id;
ANALYZE journal;
"""

_HELD_BY_0012 = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM reversals) OR EXISTS (SELECT 1 FROM redemptions WHERE deducted)
       OR EXISTS (SELECT 1 FROM accounts WHERE debt > 0) THEN
        RAISE EXCEPTION 'reversals, deductions or debts are recorded: revision 0011 cannot '
                        'hold them';
    END IF;
END
$$;
"""

_TABLES_DOWN = """
DROP TABLE journal;
DROP TABLE reversals;
DROP INDEX ix_redemptions_customer_owed;
DROP INDEX ix_lots_customer_expiry;
ALTER TABLE redemptions DROP COLUMN reversed_points, DROP COLUMN owed, DROP COLUMN deducted;
ALTER TABLE lots DROP COLUMN expired_returns;
ALTER TABLE accounts DROP COLUMN debt;
"""


def _statements(script: str) -> list[str]:
    """The statements of a script of plain DDL and DML (no function bodies), one by one."""
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]


def upgrade() -> None:
    for statement in _statements(_TABLES_UP):
        op.execute(statement)
    for function in _OLD_FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    _install(_FROZEN)


def _install(directory: Path) -> None:
    """The functions of ``directory``; a plain SQL function's body names functions installed
    after it (as a restore does, their bodies are checked when they run)."""
    op.execute("SET check_function_bodies = off")
    for source in sorted(directory.glob("*.sql")):
        op.execute(source.read_text())
    op.execute("RESET check_function_bodies")


def downgrade() -> None:
    op.execute(_HELD_BY_0012)
    for function in _NEW_FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    _install(_FROZEN_0010)
    for statement in _statements(_TABLES_DOWN):
        op.execute(statement)
