-- An order's points credited exactly once (POST /customer/{customerId}/orders): the order is
-- recorded in the same transaction as its lot (rewardpoints_add_lot, the order's id as the
-- lot's reference-id), and an order recorded before adds nothing. A second award of the same
-- order waits for the first to commit. Answers 'awarded', or 'earlier' with the first
-- award's points and lot; an order awarded to another customer is raised (RPORD), so an
-- account this call created goes with it. An order awarded to a customer deleted since stays
-- awarded: it is answered 'earlier' and brings no account back.
CREATE OR REPLACE FUNCTION rewardpoints_award_order(
    p_tenant varchar, p_customer varchar, p_order varchar, p_points bigint, p_lot_id varchar,
    p_description text, p_validity_months integer, p_hash varchar, p_reason text,
    p_actor text
) RETURNS TABLE (outcome text, awarded_points bigint, awarded_lot varchar)
LANGUAGE plpgsql AS $$
DECLARE
    v_lot varchar := CASE WHEN p_points > 0 THEN p_lot_id END;
    v_earlier record;
BEGIN
    IF NOT rewardpoints_lock_account(p_tenant, p_customer, false) THEN
        SELECT o.customer_id, o.points, o.lot_id INTO v_earlier
          FROM awarded_orders o WHERE o.tenant = p_tenant AND o.order_id = p_order;
        IF FOUND AND v_earlier.customer_id = p_customer THEN
            RETURN QUERY SELECT 'earlier'::text, v_earlier.points, v_earlier.lot_id;
            RETURN;
        END IF;
        PERFORM rewardpoints_lock_account(p_tenant, p_customer, true);
    END IF;
    INSERT INTO awarded_orders (tenant, order_id, customer_id, points, lot_id, created_at)
    VALUES (p_tenant, p_order, p_customer, p_points, v_lot, rewardpoints_read_now())
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT o.customer_id, o.points, o.lot_id INTO v_earlier
          FROM awarded_orders o WHERE o.tenant = p_tenant AND o.order_id = p_order;
        IF v_earlier.customer_id <> p_customer THEN
            RAISE EXCEPTION 'order already awarded to another customer' USING ERRCODE = 'RPORD';
        END IF;
        RETURN QUERY SELECT 'earlier'::text, v_earlier.points, v_earlier.lot_id;
        RETURN;
    END IF;
    IF v_lot IS NOT NULL THEN
        PERFORM rewardpoints_raise_refusal(
            rewardpoints_add_lot(p_tenant, p_customer, v_lot, false, p_order, p_description,
                                 p_points, NULL, p_validity_months, p_hash, 'added', p_reason,
                                 p_actor));
    END IF;
    RETURN QUERY SELECT 'awarded'::text, p_points, v_lot;
END
$$;
