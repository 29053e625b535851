-- Every customer of the tenant with points expiring after p_now and before p_before, ordered
-- by customer id (GET /expiringPoints): the points and the earliest validUntil among those lots
-- (the lots of rewardpoints_expiring_lots). A plain SQL function, so PostgreSQL inlines it and
-- the rows stream out in the tenant's open lots' index order.
CREATE OR REPLACE FUNCTION rewardpoints_expiring_customers(
    p_tenant varchar, p_now timestamptz, p_before timestamptz
) RETURNS TABLE (customer_id varchar, points bigint, first_expiry timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT l.customer_id, SUM(l.points - l.used_points)::bigint, MIN(l.valid_until)
      FROM lots l
     WHERE l.tenant = p_tenant AND NOT l.used_up
       AND l.valid_until > p_now AND l.valid_until < p_before
     GROUP BY l.customer_id
     ORDER BY l.customer_id
$$;
