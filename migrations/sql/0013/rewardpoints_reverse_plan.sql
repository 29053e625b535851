-- Which lots a reversal of p_points of the redemption p_redemption gives points back to, and
-- how many to each: the lots the redemption drew from, in the reverse order of drawing (the
-- newest lot first), each at most what the redemption still holds of it (its usage). A lot
-- whose validUntil is not after p_now takes its share back expired. Read by the reversal
-- (rewardpoints_reverse) and by its preview alike. Each usage's lot is one probe of the lots'
-- key (OFFSET 0 keeps the planner from joining the usages to all the customer's lots).
CREATE OR REPLACE FUNCTION rewardpoints_reverse_plan(
    p_tenant varchar, p_customer varchar, p_redemption varchar, p_points bigint,
    p_now timestamptz
) RETURNS TABLE (lot_id varchar, share bigint, expired boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_left bigint := p_points;
    v_use record;
BEGIN
    FOR v_use IN
        SELECT u.lot_id AS id, u.points AS held, l.valid_until <= p_now AS gone
          FROM lot_usages u
         CROSS JOIN LATERAL (
               SELECT l.created_at, l.valid_until FROM lots l
                WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = u.lot_id
               OFFSET 0) AS l
         WHERE u.tenant = p_tenant AND u.customer_id = p_customer
           AND u.redemption_id = p_redemption
         ORDER BY l.created_at DESC, u.lot_id DESC
    LOOP
        EXIT WHEN v_left = 0;
        lot_id := v_use.id;
        share := LEAST(v_left, v_use.held);
        expired := v_use.gone;
        v_left := v_left - share;
        RETURN NEXT;
    END LOOP;
END
$$;
