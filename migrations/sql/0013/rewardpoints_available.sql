-- A customer's points at p_now, as every write, preview and balance read reads them: the open
-- lots' points left (lots with points left whose validUntil is after p_now) less the customer's
-- debt (points deducted beyond the balance, with a negative balance allowed; rewardpoints_deduct).
-- Also the earliest validUntil among the open lots, or a moment before it: the end of the
-- window in which the balance read here holds.
-- Every write stores on the account the balance it leaves (active_points, at active_since) and
-- the end of its window (active_until: the earliest expiry among the lots it counts, or
-- earlier). Inside the window the balance is the stored one. Past it, it is the stored one
-- less the points of the lots that expired since the write, read through the index of the lots
-- by validUntil (ix_lots_customer_expiry), as is the next expiry: the cost is in proportion to
-- the lots that expired, not to the customer's history. Before the write (a clock set back) or
-- with nothing stored (an imported customer) the open lots are summed.
-- lapsed_after: NULL when the stored balance held; else the moment after which the lots that
-- expired by p_now were read ('-infinity' when every open lot was summed). No row without an
-- account. A plain SQL function, so PostgreSQL inlines it into the statements that read it.
CREATE OR REPLACE FUNCTION rewardpoints_available(
    p_tenant varchar, p_customer varchar, p_now timestamptz
) RETURNS TABLE (available bigint, open_points bigint, debt bigint, first_expiry timestamptz,
                 lapsed_after timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT w.open_points - a.debt, w.open_points, a.debt,
           CASE WHEN w.lapsed_after IS NULL THEN a.active_until ELSE (
               SELECT l.valid_until FROM lots l
                WHERE l.tenant = p_tenant AND l.customer_id = p_customer
                  AND NOT l.used_up AND l.valid_until > p_now
                ORDER BY l.valid_until LIMIT 1) END,
           w.lapsed_after
      FROM accounts a
     CROSS JOIN LATERAL (
        SELECT CASE WHEN s.lapsed_after IS NULL THEN a.active_points + a.debt
                    WHEN s.lapsed_after = '-infinity' THEN (
                        SELECT COALESCE(SUM(l.points - l.used_points), 0) FROM lots l
                         WHERE l.tenant = p_tenant AND l.customer_id = p_customer
                           AND NOT l.used_up AND l.valid_until > p_now)
                    ELSE a.active_points + a.debt - (
                        SELECT COALESCE(SUM(l.points - l.used_points), 0) FROM lots l
                         WHERE l.tenant = p_tenant AND l.customer_id = p_customer
                           AND NOT l.used_up AND l.valid_until > s.lapsed_after
                           AND l.valid_until <= p_now)
               END::bigint AS open_points,
               s.lapsed_after
          FROM (SELECT CASE WHEN a.active_points IS NULL OR p_now < a.active_since
                                 THEN '-infinity'::timestamptz
                            WHEN p_now < a.active_until THEN NULL
                            ELSE a.active_since END AS lapsed_after) AS s
        OFFSET 0  -- evaluated once, though read twice above
     ) AS w
     WHERE a.tenant = p_tenant AND a.customer_id = p_customer
$$;
