"""Redemptions waiting at the same moment, applied in one transaction: one commit for many.

Under load, a worker's redemptions each paid for a commit of their own, and a commit waits for
its WAL to reach the disk. Of one customer's redemptions only one can hold the customer's lock
at a time, and it holds it until its commit is on disk, so one busy customer was served one
WAL flush after another. ``rewardpoints_redeem_many`` takes the redemptions a worker has
waiting (direct.py, ``Coalesced``) and applies each, in the order given, with
``rewardpoints_redeem`` itself, so every ledger rule is the one function's, then commits them
together.

It first locks the accounts of all of them in key order, so two calls never wait for each
other's locks in a cycle; every other write locks one account only. ``p_nows`` holds each
redemption's clock reading, NULL for the database's own clock read under the lock.

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

REDEEM_MANY = """
CREATE OR REPLACE FUNCTION rewardpoints_redeem_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_descriptions text[], p_points bigint[], p_hashes varchar[], p_nows timestamptz[]
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_result record;
BEGIN
    PERFORM 1 FROM accounts a
     WHERE (a.tenant, a.customer_id) IN (
           SELECT k.tenant, k.customer_id
             FROM unnest(p_tenants, p_customers) AS k(tenant, customer_id))
     ORDER BY a.tenant, a.customer_id
       FOR UPDATE;
    FOR i IN 1 .. cardinality(p_ids) LOOP
        SELECT r.outcome, r.available INTO v_result
          FROM rewardpoints_redeem(p_tenants[i], p_customers[i], p_ids[i], p_client_ids[i],
                                   p_descriptions[i], p_points[i], p_hashes[i], p_nows[i]) AS r;
        outcome := v_result.outcome;
        available := v_result.available;
        RETURN NEXT;
    END LOOP;
END
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(REDEEM_MANY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION rewardpoints_redeem_many(varchar[], varchar[], varchar[], boolean[],"
            " text[], bigint[], varchar[], timestamptz[])"
        )
