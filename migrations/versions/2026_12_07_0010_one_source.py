"""Entry ids unique per customer, and every ledger write through one set of functions.

An entry's id was unique per tenant: the same id on two customers was refused as a conflict,
though an Emporix client expects two entries (its spec's startPoints and addPoints examples
share one id). Lots and redemptions are now keyed by (tenant, customer_id, id); a lot's usages
carry the customer too, so they are found and deleted by customer, and coupons refer to their
redemption by customer. Within a customer an id stays unique across lots and redemptions
together, checked under the customer's lock (rewardpoints_entry_seen).

The functions are the ledger's rules, each in one file (src/rewardpoints/sql/); this revision
installs frozen copies of them (migrations/sql/0010/), and a test checks a migrated database
against the package's files. Every write goes through them: addPoints, redeemPoints,
startPoints, orders, chargebacks and the storefront redeem, each reading the one clock,
rewardpoints_now(), under the customer's lock. They replace revision 0009's set, whose
signatures carried a clock reading from the service.

The keys are rebuilt under exclusive locks on the ledger's tables (a few seconds per million
lots), and the functions the service of revision 0009 calls are replaced by others: stop that
service for the upgrade (one still writing can also make the upgrade fail on a deadlock; run
it again). The downgrade refuses when two customers of a tenant share an entry id, which the
old keys cannot hold.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_FROZEN = Path(__file__).parents[1] / "sql" / "0010"

_OLD_FUNCTIONS = (
    "rewardpoints_add(varchar, varchar, varchar, boolean, text, text, bigint, timestamptz,"
    " integer, varchar, timestamptz)",
    "rewardpoints_redeem(varchar, varchar, varchar, boolean, text, bigint, varchar, timestamptz)",
    "rewardpoints_add_many(varchar[], varchar[], varchar[], boolean[], text[], text[], bigint[],"
    " timestamptz[], integer[], varchar[], timestamptz[])",
    "rewardpoints_redeem_many(varchar[], varchar[], varchar[], boolean[], text[], bigint[],"
    " varchar[], timestamptz[])",
    "rewardpoints_lot_item(varchar, varchar, text, text, bigint, bigint, timestamptz,"
    " timestamptz, bigint)",
)

_NEW_FUNCTIONS = (
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
    "rewardpoints_delete_customer(varchar, varchar)",
    "rewardpoints_entry_seen(varchar, varchar, varchar, varchar)",
    "rewardpoints_entry_time(varchar, varchar)",
    "rewardpoints_lock_account(varchar, varchar, boolean)",
    "rewardpoints_lock_accounts(varchar[], varchar[])",
    "rewardpoints_lot_item(varchar, varchar, varchar, text, text, bigint, bigint, timestamptz,"
    " timestamptz, bigint)",
    "rewardpoints_now()",
    "rewardpoints_raise_refusal(text)",
    "rewardpoints_read_now()",
    "rewardpoints_redeem(varchar, varchar, varchar, boolean, text, bigint, varchar)",
    "rewardpoints_redeem_many(varchar[], varchar[], varchar[], boolean[], text[], bigint[],"
    " varchar[])",
)

_KEYS_UP = """
ALTER TABLE lot_usages ADD COLUMN customer_id varchar(255) COLLATE "C";
UPDATE lot_usages u SET customer_id = l.customer_id
  FROM lots l WHERE l.tenant = u.tenant AND l.id = u.lot_id;
ALTER TABLE lot_usages ALTER COLUMN customer_id SET NOT NULL;
ALTER TABLE lot_usages DROP CONSTRAINT fk_lot_usages_lots,
                       DROP CONSTRAINT fk_lot_usages_redemptions;
ALTER TABLE coupons DROP CONSTRAINT fk_coupons_redemptions,
                    DROP CONSTRAINT uq_coupons_tenant_redemption_id;
ALTER TABLE lots DROP CONSTRAINT pk_lots,
                 ADD CONSTRAINT pk_lots PRIMARY KEY (tenant, customer_id, id);
ALTER TABLE redemptions DROP CONSTRAINT pk_redemptions,
                        ADD CONSTRAINT pk_redemptions PRIMARY KEY (tenant, customer_id, id);
ALTER TABLE lot_usages DROP CONSTRAINT pk_lot_usages,
    ADD CONSTRAINT pk_lot_usages PRIMARY KEY (tenant, customer_id, lot_id, redemption_id),
    ADD CONSTRAINT fk_lot_usages_lots FOREIGN KEY (tenant, customer_id, lot_id)
        REFERENCES lots (tenant, customer_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT fk_lot_usages_redemptions FOREIGN KEY (tenant, customer_id, redemption_id)
        REFERENCES redemptions (tenant, customer_id, id) ON DELETE CASCADE;
DROP INDEX ix_lot_usages_redemption;
CREATE INDEX ix_lot_usages_redemption ON lot_usages (tenant, customer_id, redemption_id);
DROP INDEX ix_lot_usages_lot_order;
CREATE INDEX ix_lot_usages_lot_order
    ON lot_usages (tenant, customer_id, lot_id, created_at, redemption_id);
ALTER TABLE coupons
    ADD CONSTRAINT uq_coupons_tenant_customer_id_redemption_id
        UNIQUE (tenant, customer_id, redemption_id),
    ADD CONSTRAINT fk_coupons_redemptions FOREIGN KEY (tenant, customer_id, redemption_id)
        REFERENCES redemptions (tenant, customer_id, id) ON DELETE CASCADE;
"""

_SHARED_IDS = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM (SELECT tenant, id FROM lots UNION ALL
                              SELECT tenant, id FROM redemptions) AS e
                GROUP BY tenant, id HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'entry ids shared by two customers (or a lot and a redemption) of one '
                        'tenant: revision 0009 cannot hold them';
    END IF;
END
$$;
"""

_KEYS_DOWN = """
ALTER TABLE coupons DROP CONSTRAINT fk_coupons_redemptions,
                    DROP CONSTRAINT uq_coupons_tenant_customer_id_redemption_id;
ALTER TABLE lot_usages DROP CONSTRAINT fk_lot_usages_lots,
                       DROP CONSTRAINT fk_lot_usages_redemptions,
                       DROP CONSTRAINT pk_lot_usages;
ALTER TABLE lots DROP CONSTRAINT pk_lots, ADD CONSTRAINT pk_lots PRIMARY KEY (tenant, id);
ALTER TABLE redemptions DROP CONSTRAINT pk_redemptions,
                        ADD CONSTRAINT pk_redemptions PRIMARY KEY (tenant, id);
DROP INDEX ix_lot_usages_redemption;
DROP INDEX ix_lot_usages_lot_order;
ALTER TABLE lot_usages DROP COLUMN customer_id,
    ADD CONSTRAINT pk_lot_usages PRIMARY KEY (tenant, lot_id, redemption_id),
    ADD CONSTRAINT fk_lot_usages_lots FOREIGN KEY (tenant, lot_id)
        REFERENCES lots (tenant, id) ON DELETE CASCADE,
    ADD CONSTRAINT fk_lot_usages_redemptions FOREIGN KEY (tenant, redemption_id)
        REFERENCES redemptions (tenant, id) ON DELETE CASCADE;
CREATE INDEX ix_lot_usages_redemption ON lot_usages (tenant, redemption_id);
CREATE INDEX ix_lot_usages_lot_order ON lot_usages (tenant, lot_id, created_at, redemption_id);
ALTER TABLE coupons
    ADD CONSTRAINT uq_coupons_tenant_redemption_id UNIQUE (tenant, redemption_id),
    ADD CONSTRAINT fk_coupons_redemptions FOREIGN KEY (tenant, redemption_id)
        REFERENCES redemptions (tenant, id) ON DELETE CASCADE;
"""


def _revision(name: str) -> ModuleType:
    path = next(Path(__file__).parent.glob(f"*_{name}_*.py"))
    spec = importlib.util.spec_from_file_location(f"rewardpoints_migration_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _statements(script: str) -> list[str]:
    """The statements of a script of plain DDL (no function bodies), one by one."""
    return [statement.strip() for statement in script.split(";\n") if statement.strip()]


def upgrade() -> None:
    for statement in _statements(_KEYS_UP):
        op.execute(statement)
    for function in _OLD_FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    for source in sorted(_FROZEN.glob("*.sql")):
        op.execute(source.read_text())


def downgrade() -> None:
    op.execute(_SHARED_IDS)
    for function in _NEW_FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    for statement in _statements(_KEYS_DOWN):
        op.execute(statement)
    op.execute(_revision("0006").ADD)
    op.execute(_revision("0008").LOT_ITEM)
    op.execute(_revision("0008").REDEEM)
    op.execute(_revision("0009").REDEEM_MANY)
    op.execute(_revision("0009").ADD_MANY)
