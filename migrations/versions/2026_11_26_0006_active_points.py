"""Each account keeps its active points as of its last write, so a balance is one row.

A balance summed the customer's open lots: one row each, 1,000 rows for a customer with 1,000
open lots. Every write (under the customer's lock) now also stores on the account the active
points it leaves (``active_points``), the time it wrote them (``active_since``) and the earliest
expiry among the lots they count (``active_until``). Until then no counted lot expires and no
other lot can start counting, so a balance read at a time in ``[active_since, active_until)``
is ``active_points``; outside that window (a lot expired since, or the columns are NULL because
the account has not been written since this revision) the lots are summed as before. The
stored value is a cache of the lots, never a source: redemptions still check the lots.

The same rules as revision 0005's functions; only the stored active points are new.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _revision_0005() -> tuple[str, str]:
    """Revision 0005's functions (for the downgrade)."""
    path = Path(__file__).with_name("2026_11_26_0005_lots_used_up.py")
    spec = importlib.util.spec_from_file_location("rewardpoints_migration_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    add, redeem = module._functions("NOT used_up")
    return add, redeem


ADD = """
CREATE OR REPLACE FUNCTION rewardpoints_add(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_reference text, p_description text, p_points bigint, p_valid_until timestamptz,
    p_validity_months integer, p_hash varchar, p_now timestamptz
) RETURNS TABLE (outcome text, entry_id varchar)
LANGUAGE plpgsql SET timezone TO 'UTC' AS $$
DECLARE
    v_now timestamptz;
    v_valid_until timestamptz;
    v_existing varchar;
    v_balance bigint;
    v_first_expiry timestamptz;
BEGIN
    PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO accounts (tenant, customer_id, created_at)
        VALUES (p_tenant, p_customer, COALESCE(p_now, clock_timestamp()))
        ON CONFLICT DO NOTHING;
        PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer FOR UPDATE;
    END IF;
    v_now := COALESCE(p_now, clock_timestamp());
    IF p_client_id THEN
        SELECT h INTO v_existing FROM (
            SELECT request_hash AS h FROM lots WHERE tenant = p_tenant AND id = p_id
            UNION ALL
            SELECT request_hash FROM redemptions WHERE tenant = p_tenant AND id = p_id
        ) AS earlier LIMIT 1;
        IF FOUND THEN
            IF v_existing = p_hash THEN
                RETURN QUERY SELECT 'retry'::text, p_id;
                RETURN;
            END IF;
            -- Raised, not returned: the account this call may have created is rolled back.
            RAISE EXCEPTION 'entry id already used' USING ERRCODE = 'RP409';
        END IF;
    END IF;
    v_valid_until := COALESCE(p_valid_until, v_now + make_interval(months => p_validity_months));
    IF v_valid_until <= v_now THEN
        RAISE EXCEPTION 'validUntil must be in the future' USING ERRCODE = 'RP400';
    END IF;
    SELECT COALESCE(SUM(points - used_points), 0), MIN(valid_until)
      INTO v_balance, v_first_expiry FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND NOT used_up AND valid_until > v_now;
    INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    VALUES (p_tenant, p_id, p_customer, p_reference, p_description, p_points, 0,
            v_now, v_valid_until, v_balance + p_points, p_hash);
    UPDATE accounts
       SET active_points = v_balance + p_points, active_since = v_now,
           active_until = LEAST(v_first_expiry, v_valid_until)
     WHERE tenant = p_tenant AND customer_id = p_customer;
    RETURN QUERY SELECT 'added'::text, p_id;
END
$$;
"""

REDEEM = """
CREATE OR REPLACE FUNCTION rewardpoints_redeem(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_description text, p_points bigint, p_hash varchar, p_now timestamptz
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql SET timezone TO 'UTC' AS $$
DECLARE
    v_now timestamptz;
    v_existing varchar;
    v_available bigint;
    v_first_expiry timestamptz;
    v_wanted bigint;
    v_take bigint;
    v_lot record;
BEGIN
    PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, 0::bigint;
        RETURN;
    END IF;
    v_now := COALESCE(p_now, clock_timestamp());
    IF p_client_id THEN
        SELECT h INTO v_existing FROM (
            SELECT request_hash AS h FROM lots WHERE tenant = p_tenant AND id = p_id
            UNION ALL
            SELECT request_hash FROM redemptions WHERE tenant = p_tenant AND id = p_id
        ) AS earlier LIMIT 1;
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN v_existing = p_hash THEN 'retry' ELSE 'conflict' END,
                                0::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT COALESCE(SUM(points - used_points), 0), MIN(valid_until)
      INTO v_available, v_first_expiry FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND NOT used_up AND valid_until > v_now;
    IF v_available < p_points THEN
        RETURN QUERY SELECT 'insufficient'::text, v_available;
        RETURN;
    END IF;
    INSERT INTO redemptions (tenant, id, customer_id, description, points, created_at,
                             all_points_after_creation, request_hash)
    VALUES (p_tenant, p_id, p_customer, p_description, p_points, v_now,
            v_available - p_points, p_hash);
    v_wanted := p_points;
    FOR v_lot IN
        SELECT id, points - used_points AS remaining FROM lots
         WHERE tenant = p_tenant AND customer_id = p_customer
           AND NOT used_up AND valid_until > v_now
         ORDER BY created_at, id
    LOOP
        EXIT WHEN v_wanted = 0;
        v_take := LEAST(v_wanted, v_lot.remaining);
        UPDATE lots SET used_points = used_points + v_take
         WHERE tenant = p_tenant AND id = v_lot.id;
        INSERT INTO lot_usages (tenant, lot_id, redemption_id, points, created_at)
        VALUES (p_tenant, v_lot.id, p_id, v_take, v_now);
        v_wanted := v_wanted - v_take;
    END LOOP;
    -- The earliest expiry before the draws: the lots used up since count for nothing, so it
    -- may come early, never late.
    UPDATE accounts
       SET active_points = v_available - p_points, active_since = v_now,
           active_until = COALESCE(v_first_expiry, 'infinity')
     WHERE tenant = p_tenant AND customer_id = p_customer;
    RETURN QUERY SELECT 'redeemed'::text, v_available - p_points;
END
$$;
"""


def _time() -> sa.types.TypeEngine[object]:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("accounts", sa.Column("active_points", sa.BigInteger(), nullable=True))
    op.add_column("accounts", sa.Column("active_since", _time(), nullable=True))
    op.add_column("accounts", sa.Column("active_until", _time(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ADD)
        op.execute(REDEEM)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in _revision_0005():
            op.execute(function)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("active_until")
        batch.drop_column("active_since")
        batch.drop_column("active_points")
