-- Writes one entry of a customer's journal: what history, balances in time, expiring points
-- and the liability report read. Every write of the ledger records its entries here, in the
-- transaction and under the lock of the write, with the balance it leaves, who made it (the
-- token's subject, or the customer of a customer token) and why (the request's reason).
-- Kinds: added, chargeback, redeemed, reversed, deducted, and expired for the points of a
-- reversal that came back to a lot already expired. (A lot's remainder at its validUntil is
-- read from the lot itself: rewardpoints_lapsed.)
CREATE OR REPLACE FUNCTION rewardpoints_record(
    p_tenant varchar, p_customer varchar, p_at timestamptz, p_kind text, p_id varchar,
    p_points bigint, p_balance_after bigint, p_reference text, p_reason text, p_actor text
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO journal (tenant, customer_id, created_at, kind, entry_id, points, balance_after,
                         reference_id, reason, actor)
    VALUES (p_tenant, p_customer, p_at, p_kind, p_id, p_points, p_balance_after, p_reference,
            p_reason, p_actor)
$$;
