-- Which lots a draw of p_points takes from, and how much from each: the lot p_first_lot first,
-- when it is open, then the other open lots oldest first (createdAt, then id). A lot is open
-- while it has points left and its validUntil is after p_now. Fewer points than asked when the
-- open lots hold fewer. Read by redemptions and deductions (rewardpoints_draw) and by their
-- previews alike, so what a dry run shows is what the write does. The lots are walked through
-- the index of the lots to draw from (ix_lots_customer_open: not used up, not marked expired
-- by rewardpoints_expire) from the oldest on, so a draw reads the lots it takes from and the
-- few that expired since the customer's last write, whatever the length of its history.
CREATE OR REPLACE FUNCTION rewardpoints_draw_plan(
    p_tenant varchar, p_customer varchar, p_points bigint, p_now timestamptz,
    p_first_lot varchar
) RETURNS TABLE (lot_id varchar, take bigint, remaining bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_wanted bigint := p_points;
    v_lot record;
    v_page integer := 4;
    v_read integer;
    v_after_created timestamptz := '-infinity';
    v_after_id varchar := '';
BEGIN
    IF p_first_lot IS NOT NULL THEN
        SELECT l.id, l.points - l.used_points AS left_points INTO v_lot FROM lots l
         WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = p_first_lot
           AND NOT l.used_up AND l.valid_until > p_now;
        IF FOUND AND v_wanted > 0 THEN
            lot_id := v_lot.id;
            remaining := v_lot.left_points;
            take := LEAST(v_wanted, v_lot.left_points);
            v_wanted := v_wanted - take;
            RETURN NEXT;
        END IF;
    END IF;
    -- A page of lots at a time, each twice the last: the LIMIT keeps the plan a walk of the
    -- index, which no estimate of the customer's lots can turn into a sort of all of them.
    WHILE v_wanted > 0 LOOP
        v_read := 0;
        FOR v_lot IN
            SELECT l.id, l.created_at, l.points - l.used_points AS left_points FROM lots l
             WHERE l.tenant = p_tenant AND l.customer_id = p_customer
               AND NOT l.used_up AND NOT l.expired
               AND (l.created_at, l.id) > (v_after_created, v_after_id)
               AND l.valid_until > p_now
             ORDER BY l.created_at, l.id
             LIMIT v_page
        LOOP
            v_read := v_read + 1;
            v_after_created := v_lot.created_at;
            v_after_id := v_lot.id;
            CONTINUE WHEN v_lot.id = p_first_lot;
            lot_id := v_lot.id;
            remaining := v_lot.left_points;
            take := LEAST(v_wanted, v_lot.left_points);
            v_wanted := v_wanted - take;
            RETURN NEXT;
            EXIT WHEN v_wanted = 0;
        END LOOP;
        EXIT WHEN v_read < v_page;
        v_page := LEAST(v_page * 2, 1024);
    END LOOP;
END
$$;
