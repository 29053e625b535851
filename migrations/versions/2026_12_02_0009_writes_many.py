"""Writes waiting at the same moment, applied in one transaction: one commit for many.

Under load, a worker's redemptions and additions each paid for a commit of their own, and a
commit waits for its WAL to reach the disk. Of one customer's writes only one can hold the
customer's lock at a time, and it holds it until its commit is on disk, so one busy customer
was served one WAL flush after another. ``rewardpoints_redeem_many`` takes the redemptions a
worker has waiting (direct.py, ``Coalesced``) and applies each, in the order given, with
``rewardpoints_redeem`` itself, so every ledger rule is the one function's, then commits them
together; ``rewardpoints_add_many`` does the same for additions with ``rewardpoints_add``.

Each first locks the existing accounts of all its writes in key order, so two calls never
wait for each other's locks in a cycle; every other write locks one account only. (An
addition creates a missing account when its turn comes, as alone: two calls creating the same
two new customers in opposite orders can still deadlock, which PostgreSQL breaks and the
service answers by running the call again.) ``p_nows`` holds each write's clock reading, NULL
for the database's own clock read under the lock. An addition the function refuses (an id
used for another entry, a ``validUntil`` in the past) raises, which rolls back the whole call:
the service then applies each of its writes alone.

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

# The existing accounts of the writes, locked in key order.
_LOCK_ACCOUNTS = """
    PERFORM 1 FROM accounts a
     WHERE (a.tenant, a.customer_id) IN (
           SELECT k.tenant, k.customer_id
             FROM unnest(p_tenants, p_customers) AS k(tenant, customer_id))
     ORDER BY a.tenant, a.customer_id
       FOR UPDATE;"""

REDEEM_MANY = """
CREATE OR REPLACE FUNCTION rewardpoints_redeem_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_descriptions text[], p_points bigint[], p_hashes varchar[], p_nows timestamptz[]
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_result record;
BEGIN
    {lock_accounts}
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
""".replace("{lock_accounts}", _LOCK_ACCOUNTS.strip())

ADD_MANY = """
CREATE OR REPLACE FUNCTION rewardpoints_add_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_references text[], p_descriptions text[], p_points bigint[], p_valid_untils timestamptz[],
    p_validity_months integer[], p_hashes varchar[], p_nows timestamptz[]
) RETURNS TABLE (outcome text, entry_id varchar)
LANGUAGE plpgsql AS $$
DECLARE
    v_result record;
BEGIN
    {lock_accounts}
    FOR i IN 1 .. cardinality(p_ids) LOOP
        SELECT r.outcome, r.entry_id INTO v_result
          FROM rewardpoints_add(p_tenants[i], p_customers[i], p_ids[i], p_client_ids[i],
                                p_references[i], p_descriptions[i], p_points[i],
                                p_valid_untils[i], p_validity_months[i], p_hashes[i],
                                p_nows[i]) AS r;
        outcome := v_result.outcome;
        entry_id := v_result.entry_id;
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
