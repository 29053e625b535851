-- redeemPoints with dryRun: what rewardpoints_redeem would do now, written nowhere and under no
-- lock, by the same rules (rewardpoints_entry_seen, rewardpoints_available,
-- rewardpoints_draw_plan). One row per lot it would draw from: the outcome ('redeemed',
-- 'retry', 'conflict', 'not_found', 'insufficient'), the balance before and after, the lot and
-- the points it would take from it.
CREATE OR REPLACE FUNCTION rewardpoints_preview_redeem(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_points bigint, p_hash varchar
) RETURNS TABLE (outcome text, points_before bigint, points_after bigint, drawn_lot varchar,
                 drawn_points bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_seen text;
    v_available bigint;
BEGIN
    PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    v_now := rewardpoints_entry_time(p_tenant, p_customer);
    SELECT a.available INTO v_available
      FROM rewardpoints_available(p_tenant, p_customer, v_now) AS a;
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen IS NOT NULL THEN
            RETURN QUERY SELECT v_seen, v_available, v_available, NULL::varchar, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    IF v_available < p_points THEN
        RETURN QUERY SELECT 'insufficient'::text, v_available, NULL::bigint, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'redeemed'::text, v_available, v_available - p_points, p.lot_id, p.take
      FROM rewardpoints_draw_plan(p_tenant, p_customer, p_points, v_now, NULL) AS p;
END
$$;
