-- Applies a draw (rewardpoints_draw_plan) for the redemption or deduction p_redemption, whose
-- row is written already, under the customer's lock: each lot drawn from records the draw
-- (lot_usages: the lot's usedWith list) and has its usedPoints raised; a lot spent to its last
-- point stores its summary item (rewardpoints_lot_item), the usage just written included.
-- Answers the points drawn.
CREATE OR REPLACE FUNCTION rewardpoints_draw(
    p_tenant varchar, p_customer varchar, p_redemption varchar, p_points bigint,
    p_now timestamptz, p_first_lot varchar
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_drawn bigint := 0;
    v_lot record;
BEGIN
    FOR v_lot IN
        SELECT p.lot_id AS id, p.take, p.remaining
          FROM rewardpoints_draw_plan(p_tenant, p_customer, p_points, p_now, p_first_lot) AS p
    LOOP
        INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points, created_at)
        VALUES (p_tenant, p_customer, v_lot.id, p_redemption, v_lot.take, p_now);
        IF v_lot.take = v_lot.remaining THEN
            UPDATE lots l
               SET used_points = l.used_points + v_lot.take,
                   summary_item = rewardpoints_lot_item(
                       l.tenant, l.customer_id, l.id, l.reference_id, l.description, l.points,
                       l.used_points + v_lot.take, l.created_at, l.valid_until,
                       l.all_points_after_creation)
             WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = v_lot.id;
        ELSE
            UPDATE lots l SET used_points = l.used_points + v_lot.take
             WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = v_lot.id;
        END IF;
        v_drawn := v_drawn + v_lot.take;
    END LOOP;
    RETURN v_drawn;
END
$$;
