"""PostgreSQL: add and redeem as one function call each, so the customer's lock is held for
one round trip. SQLite has no stored functions and keeps the same rules in ledger.py.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The rules are those of ledger.py (CONTRACT.md section 2); the test suites run them on both.
# p_now NULL: read the clock under the lock, so createdAt order is the order writes applied.
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
    SELECT COALESCE(SUM(points - used_points), 0) INTO v_balance FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND used_points < points AND valid_until > v_now;
    INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    VALUES (p_tenant, p_id, p_customer, p_reference, p_description, p_points, 0,
            v_now, v_valid_until, v_balance + p_points, p_hash);
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
    SELECT COALESCE(SUM(points - used_points), 0) INTO v_available FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND used_points < points AND valid_until > v_now;
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
           AND used_points < points AND valid_until > v_now
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
    RETURN QUERY SELECT 'redeemed'::text, v_available - p_points;
END
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(ADD)
    op.execute(REDEEM)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS rewardpoints_add(varchar, varchar, varchar, boolean, text, text,"
        " bigint, timestamptz, integer, varchar, timestamptz)"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS rewardpoints_redeem(varchar, varchar, varchar, boolean, text,"
        " bigint, varchar, timestamptz)"
    )
