-- The customer's points at p_now (rewardpoints_available) for a write that holds the customer's
-- lock and applies at p_now, never before the last write (rewardpoints_entry_time). When lots
-- have expired since the balance stored on the account, they are marked expired, so that
-- draws no longer meet them in the index of the lots to draw from (rewardpoints_draw_plan), and
-- the balance at p_now is stored with its window; both read and write only the lots that
-- expired. A lot is marked only once its validUntil is not after a write's time, and no later
-- write of the customer applies before that time, so a marked lot never counts again.
CREATE OR REPLACE FUNCTION rewardpoints_expire(
    p_tenant varchar, p_customer varchar, p_now timestamptz
) RETURNS TABLE (available bigint, open_points bigint, debt bigint, first_expiry timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_lapsed_after timestamptz;
BEGIN
    SELECT b.available, b.open_points, b.debt, b.first_expiry, b.lapsed_after
      INTO available, open_points, debt, first_expiry, v_lapsed_after
      FROM rewardpoints_available(p_tenant, p_customer, p_now) AS b;
    IF v_lapsed_after IS NOT NULL THEN
        -- By validUntil (ix_lots_customer_expiry): none of these is marked yet but when every
        -- lot is read ('-infinity', once per account), and naming that here would let the
        -- planner walk all the lots to draw from instead.
        UPDATE lots l SET expired = true
         WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND NOT l.used_up
           AND l.valid_until > v_lapsed_after AND l.valid_until <= p_now;
        UPDATE accounts a
           SET active_points = available, active_since = p_now,
               active_until = COALESCE(first_expiry, 'infinity')
         WHERE a.tenant = p_tenant AND a.customer_id = p_customer;
    END IF;
    RETURN NEXT;
END
$$;
