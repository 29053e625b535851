-- The tenant's figures for finance (GET /liability), at p_now, by calendar month in UTC:
--   ('outstanding', NULL, NULL, points, customers): the balances above zero, summed, and how
--     many customers hold them; ('debt', ...): the balances below zero, as points owed;
--   ('expiring', month, NULL, points, NULL): the open lots' points that expire in that month,
--     for the p_months months from p_now's on (the first from p_now);
--   ('flow', month, kind, points, NULL): for p_now's month and the p_months - 1 before it,
--     the points of each kind of history entry dated in that month: issued (added and
--     chargeback entries), redeemed, reversed, deducted, expired (the journal's, and the lots'
--     remainders at their validUntil: rewardpoints_lapsed). Months and kinds with none are
--     left out. These are the sums of the customers' histories.
CREATE OR REPLACE FUNCTION rewardpoints_liability(
    p_tenant varchar, p_now timestamptz, p_months integer
) RETURNS TABLE (section text, month timestamptz, kind text, points bigint, customers bigint)
LANGUAGE plpgsql STABLE SET timezone TO 'UTC' AS $$
DECLARE
    v_first timestamptz := date_trunc('month', p_now)
                           - make_interval(months => p_months - 1);
    v_until timestamptz := date_trunc('month', p_now) + make_interval(months => p_months);
BEGIN
    RETURN QUERY
    WITH balances AS (
        SELECT COALESCE(o.open_points, 0) - a.debt AS balance
          FROM accounts a
          LEFT JOIN (SELECT l.customer_id, SUM(l.points - l.used_points) AS open_points
                       FROM lots l
                      WHERE l.tenant = p_tenant AND NOT l.used_up AND l.valid_until > p_now
                      GROUP BY l.customer_id) AS o ON o.customer_id = a.customer_id
         WHERE a.tenant = p_tenant
    )
    SELECT 'outstanding'::text, NULL::timestamptz, NULL::text,
           COALESCE(SUM(b.balance) FILTER (WHERE b.balance > 0), 0)::bigint,
           count(*) FILTER (WHERE b.balance > 0)
      FROM balances b
    UNION ALL
    SELECT 'debt', NULL, NULL, COALESCE(-SUM(b.balance) FILTER (WHERE b.balance < 0), 0)::bigint,
           count(*) FILTER (WHERE b.balance < 0)
      FROM balances b;

    RETURN QUERY
    SELECT 'expiring'::text, date_trunc('month', l.valid_until), NULL::text,
           SUM(l.points - l.used_points)::bigint, NULL::bigint
      FROM lots l
     WHERE l.tenant = p_tenant AND NOT l.used_up
       AND l.valid_until > p_now AND l.valid_until < v_until
     GROUP BY 2 ORDER BY 2;

    RETURN QUERY
    SELECT 'flow'::text, f.month, f.kind, SUM(f.points)::bigint, NULL::bigint
      FROM (
        SELECT date_trunc('month', j.created_at) AS month,
               CASE WHEN j.kind IN ('added', 'chargeback') THEN 'issued' ELSE j.kind END AS kind,
               j.points
          FROM journal j
         WHERE j.tenant = p_tenant AND j.created_at >= v_first AND j.created_at <= p_now
        UNION ALL
        SELECT date_trunc('month', l.valid_until), 'expired',
               rewardpoints_lapsed(l.points, l.used_points, l.expired_returns)
          FROM lots l
         WHERE l.tenant = p_tenant AND NOT l.used_up
           AND l.valid_until >= v_first AND l.valid_until <= p_now
      ) AS f
     WHERE f.points > 0
     GROUP BY f.month, f.kind
     ORDER BY f.month, f.kind;
END
$$;
