-- A customer's lots with points left that expire after p_now and before p_before, soonest
-- first (GET /customer/{customerId}/expiringPoints): each lot's id, points left and validUntil.
CREATE OR REPLACE FUNCTION rewardpoints_expiring_lots(
    p_tenant varchar, p_customer varchar, p_now timestamptz, p_before timestamptz
) RETURNS TABLE (lot_id varchar, points bigint, valid_until timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT l.id, l.points - l.used_points, l.valid_until
      FROM lots l
     WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND NOT l.used_up
       AND l.valid_until > p_now AND l.valid_until < p_before
     ORDER BY l.valid_until, l.id
$$;
