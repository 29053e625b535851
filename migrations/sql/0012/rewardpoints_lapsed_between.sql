-- The points of the customer's lots that expired after p_after and at or before p_until (at
-- p_until, only lots whose id is at most p_until_id, when given): what the balance lost to
-- expiry in between, when no write came between (every write stores its balance after).
CREATE OR REPLACE FUNCTION rewardpoints_lapsed_between(
    p_tenant varchar, p_customer varchar, p_after timestamptz, p_until timestamptz,
    p_until_id varchar
) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(SUM(rewardpoints_lapsed(l.points, l.used_points, l.expired_returns)), 0)::bigint
      FROM lots l
     WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND NOT l.used_up
       AND l.valid_until > p_after AND l.valid_until <= p_until
       AND (p_until_id IS NULL OR l.valid_until < p_until OR l.id <= p_until_id)
$$;
