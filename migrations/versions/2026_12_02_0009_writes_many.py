"""Writes waiting at the same moment, applied in one transaction: one commit for many.

Under load, a worker's redemptions and additions each paid for a commit of their own, and a
commit waits for its WAL to reach the disk. Of one customer's writes only one can hold the
customer's lock at a time, and it holds it until its commit is on disk, so one busy customer
was served one WAL flush after another. ``rewardpoints_redeem_many`` takes the redemptions a
worker has waiting (direct.py, ``Coalesced``) and applies each, in the order given, with
``rewardpoints_redeem`` itself, so every ledger rule is the one function's, then commits them
together; ``rewardpoints_add_many`` does the same for additions with ``rewardpoints_add``.

A call for one customer waits for the customer's lock as a write alone would, and applies
them all: one busy customer's writes share one wait for the disk. A call for several
customers waits for no lock: it locks, in key order, the accounts it can lock at once
(``SKIP LOCKED``), applies the writes of those, and answers the others ``busy`` (their
accounts held by another transaction, or not yet created): the service sends each of those
alone, as before. So a customer locked elsewhere holds up its own writes only, for at most the
lock timeout, and no call waits for another's account locks while holding some of its own.
(Two calls inserting the same client-given ids for different customers at once can still wait
on each other's rows; PostgreSQL breaks such a cycle and the service runs the call again.)
``p_nows`` holds each write's clock reading, NULL for the database's own clock read under the
lock.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Which writes of the call to apply now (v_apply): with one customer, all of them, after
# waiting for the customer's lock as a write alone would; with several, those whose accounts
# this call could lock at once, in key order. The others come back 'busy' and are sent alone.
_LOCK_ACCOUNTS = """
    IF NOT EXISTS (SELECT 1 FROM unnest(p_tenants, p_customers) AS k(tenant, customer_id)
                    WHERE k.tenant <> p_tenants[1] OR k.customer_id <> p_customers[1]) THEN
        PERFORM 1 FROM accounts
         WHERE tenant = p_tenants[1] AND customer_id = p_customers[1] FOR UPDATE;
        v_apply := array_fill(true, ARRAY[cardinality(p_ids)]);
    ELSE
        -- A tenant holds no '/', so tenant || '/' || customer names one account.
        SELECT array_agg(locked.tenant || '/' || locked.customer_id) INTO v_locked FROM (
            SELECT a.tenant, a.customer_id FROM accounts a
             WHERE (a.tenant, a.customer_id) IN (
                   SELECT k.tenant, k.customer_id
                     FROM unnest(p_tenants, p_customers) AS k(tenant, customer_id))
             ORDER BY a.tenant, a.customer_id
               FOR UPDATE SKIP LOCKED) AS locked;
        SELECT array_agg(COALESCE(k.tenant || '/' || k.customer_id = ANY(v_locked), false)
                         ORDER BY k.n)
          INTO v_apply
          FROM unnest(p_tenants, p_customers) WITH ORDINALITY AS k(tenant, customer_id, n);
    END IF;"""

REDEEM_MANY = """
CREATE OR REPLACE FUNCTION rewardpoints_redeem_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_descriptions text[], p_points bigint[], p_hashes varchar[], p_nows timestamptz[]
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_locked text[];
    v_apply boolean[];
    v_result record;
BEGIN
    {lock_accounts}
    FOR i IN 1 .. cardinality(p_ids) LOOP
        IF v_apply[i] THEN
            SELECT r.outcome, r.available INTO v_result
              FROM rewardpoints_redeem(p_tenants[i], p_customers[i], p_ids[i], p_client_ids[i],
                                       p_descriptions[i], p_points[i], p_hashes[i],
                                       p_nows[i]) AS r;
            outcome := v_result.outcome;
            available := v_result.available;
        ELSE
            outcome := 'busy';
            available := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
""".replace("{lock_accounts}", _LOCK_ACCOUNTS.strip())

# rewardpoints_add raises its refusals, which would roll back the whole call: its checks are
# made here first, in its order, and answered as it would answer them ('retry': the same
# entry again; RP409: the id is another entry's; RP400: validUntil not in the future); only the
# additions that pass them go to it. (Its own clock reading comes a moment later: a validUntil
# falling between the two makes it raise, and the service then sends each write alone.)
ADD_MANY = """
CREATE OR REPLACE FUNCTION rewardpoints_add_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_references text[], p_descriptions text[], p_points bigint[], p_valid_untils timestamptz[],
    p_validity_months integer[], p_hashes varchar[], p_nows timestamptz[]
) RETURNS TABLE (outcome text, entry_id varchar)
LANGUAGE plpgsql AS $$
DECLARE
    v_locked text[];
    v_apply boolean[];
    v_existing varchar;
    v_result record;
BEGIN
    {lock_accounts}
    FOR i IN 1 .. cardinality(p_ids) LOOP
        outcome := NULL;
        entry_id := p_ids[i];
        IF NOT v_apply[i] THEN
            outcome := 'busy';
        ELSIF p_client_ids[i] THEN
            SELECT h INTO v_existing FROM (
                SELECT request_hash AS h FROM lots WHERE tenant = p_tenants[i] AND id = p_ids[i]
                UNION ALL
                SELECT request_hash FROM redemptions
                 WHERE tenant = p_tenants[i] AND id = p_ids[i]
            ) AS earlier LIMIT 1;
            IF FOUND THEN
                outcome := CASE WHEN v_existing = p_hashes[i] THEN 'retry' ELSE 'RP409' END;
            END IF;
        END IF;
        IF outcome IS NULL AND p_valid_untils[i] IS NOT NULL
           AND p_valid_untils[i] <= COALESCE(p_nows[i], clock_timestamp()) THEN
            outcome := 'RP400';
        END IF;
        IF outcome IS NULL THEN
            SELECT r.outcome, r.entry_id INTO v_result
              FROM rewardpoints_add(p_tenants[i], p_customers[i], p_ids[i], p_client_ids[i],
                                    p_references[i], p_descriptions[i], p_points[i],
                                    p_valid_untils[i], p_validity_months[i], p_hashes[i],
                                    p_nows[i]) AS r;
            outcome := v_result.outcome;
            entry_id := v_result.entry_id;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
""".replace("{lock_accounts}", _LOCK_ACCOUNTS.strip())


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(REDEEM_MANY)
        op.execute(ADD_MANY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION rewardpoints_redeem_many(varchar[], varchar[], varchar[], boolean[],"
            " text[], bigint[], varchar[], timestamptz[])"
        )
        op.execute(
            "DROP FUNCTION rewardpoints_add_many(varchar[], varchar[], varchar[], boolean[],"
            " text[], text[], bigint[], timestamptz[], integer[], varchar[], timestamptz[])"
        )
