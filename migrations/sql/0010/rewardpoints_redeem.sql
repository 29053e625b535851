-- redeemPoints: spends the customer's open lots, oldest first (createdAt, then id), under the
-- customer's lock. A lot is open while it has points left and its validUntil is after now.
-- Answers (outcome, available): 'redeemed' with the active points left; 'not_found' when the
-- customer has no account; 'retry' or 'conflict' for a client-given id used before
-- (rewardpoints_entry_seen); 'insufficient' with the active points there are. Each lot drawn
-- from records the draw (lot_usages: the lot's usedWith list); a lot spent to its last point
-- stores its summary item (rewardpoints_lot_item), the usage just written included.
CREATE OR REPLACE FUNCTION rewardpoints_redeem(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_description text, p_points bigint, p_hash varchar
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_seen text;
    v_available bigint;
    v_first_expiry timestamptz;
    v_wanted bigint;
    v_take bigint;
    v_lot record;
BEGIN
    IF NOT rewardpoints_lock_account(p_tenant, p_customer, false) THEN
        RETURN QUERY SELECT 'not_found'::text, 0::bigint;
        RETURN;
    END IF;
    v_now := rewardpoints_entry_time(p_tenant, p_customer);
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen IS NOT NULL THEN
            RETURN QUERY SELECT v_seen, 0::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT COALESCE(SUM(points - used_points), 0), MIN(valid_until)
      INTO v_available, v_first_expiry FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND NOT used_up AND valid_until > v_now;
    IF v_available < p_points THEN
        RETURN QUERY SELECT 'insufficient'::text, v_available;
        RETURN;
    END IF;
    INSERT INTO redemptions (tenant, customer_id, id, description, points, created_at,
                             all_points_after_creation, request_hash)
    VALUES (p_tenant, p_customer, p_id, p_description, p_points, v_now,
            v_available - p_points, p_hash);
    v_wanted := p_points;
    FOR v_lot IN
        SELECT id, points - used_points AS remaining FROM lots
         WHERE tenant = p_tenant AND customer_id = p_customer
           AND NOT used_up AND valid_until > v_now
         ORDER BY created_at, id
    LOOP
        EXIT WHEN v_wanted = 0;
        v_take := LEAST(v_wanted, v_lot.remaining);
        INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points, created_at)
        VALUES (p_tenant, p_customer, v_lot.id, p_id, v_take, v_now);
        IF v_take = v_lot.remaining THEN
            UPDATE lots
               SET used_points = used_points + v_take,
                   summary_item = rewardpoints_lot_item(
                       tenant, customer_id, id, reference_id, description, points,
                       used_points + v_take, created_at, valid_until,
                       all_points_after_creation)
             WHERE tenant = p_tenant AND customer_id = p_customer AND id = v_lot.id;
        ELSE
            UPDATE lots SET used_points = used_points + v_take
             WHERE tenant = p_tenant AND customer_id = p_customer AND id = v_lot.id;
        END IF;
        v_wanted := v_wanted - v_take;
    END LOOP;
    -- The earliest expiry before the draws: the lots used up since count for nothing, so the
    -- window may end early, never late.
    UPDATE accounts
       SET active_points = v_available - p_points, active_since = v_now,
           active_until = COALESCE(v_first_expiry, 'infinity')
     WHERE tenant = p_tenant AND customer_id = p_customer;
    RETURN QUERY SELECT 'redeemed'::text, v_available - p_points;
END
$$;
