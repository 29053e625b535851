-- A customer's points at p_now, as every write and preview reads them: the open lots' points
-- left (lots with points left whose validUntil is after p_now) less the customer's debt (points
-- deducted beyond the balance, with a negative balance allowed; rewardpoints_deduct). Also the
-- earliest validUntil among the open lots, which ends the account's stored balance's window.
-- A customer without an account has none of either.
CREATE OR REPLACE FUNCTION rewardpoints_available(
    p_tenant varchar, p_customer varchar, p_now timestamptz
) RETURNS TABLE (available bigint, open_points bigint, debt bigint, first_expiry timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT o.open_points - d.debt, o.open_points, d.debt, o.first_expiry
    FROM (SELECT COALESCE(SUM(l.points - l.used_points), 0)::bigint AS open_points,
                 MIN(l.valid_until) AS first_expiry
            FROM lots l
           WHERE l.tenant = p_tenant AND l.customer_id = p_customer
             AND NOT l.used_up AND l.valid_until > p_now) AS o,
         (SELECT COALESCE((SELECT a.debt FROM accounts a
                            WHERE a.tenant = p_tenant AND a.customer_id = p_customer), 0)::bigint
                 AS debt) AS d
$$;
