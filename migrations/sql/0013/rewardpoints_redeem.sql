-- redeemPoints: spends the customer's open lots, oldest first (rewardpoints_draw), under the
-- customer's lock. Answers (outcome, available): 'redeemed' with the active points left;
-- 'not_found' when the customer has no account; 'retry' or 'conflict' for a client-given id
-- used before (rewardpoints_entry_seen); 'insufficient' with the active points there are
-- (rewardpoints_expire: a debt counts against them). The redemption is recorded in the
-- journal with its reason and actor (rewardpoints_record). The balance is the one the account
-- stores (rewardpoints_available); the lots must hold it, or the call fails and writes nothing.
CREATE OR REPLACE FUNCTION rewardpoints_redeem(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_description text, p_points bigint, p_hash varchar, p_reason text, p_actor text
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_seen text;
    v_available bigint;
    v_first_expiry timestamptz;
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
    SELECT a.available, a.first_expiry INTO v_available, v_first_expiry
      FROM rewardpoints_expire(p_tenant, p_customer, v_now) AS a;
    IF v_available < p_points THEN
        RETURN QUERY SELECT 'insufficient'::text, v_available;
        RETURN;
    END IF;
    INSERT INTO redemptions (tenant, customer_id, id, description, points, created_at,
                             all_points_after_creation, request_hash)
    VALUES (p_tenant, p_customer, p_id, p_description, p_points, v_now,
            v_available - p_points, p_hash);
    IF rewardpoints_draw(p_tenant, p_customer, p_id, p_points, v_now, NULL) <> p_points THEN
        RAISE EXCEPTION 'the balance stored for customer % is not what its lots hold',
            p_customer;
    END IF;
    -- The earliest expiry before the draws: the lots used up since count for nothing, so the
    -- window may end early, never late.
    UPDATE accounts
       SET active_points = v_available - p_points, active_since = v_now,
           active_until = COALESCE(v_first_expiry, 'infinity')
     WHERE tenant = p_tenant AND customer_id = p_customer;
    PERFORM rewardpoints_record(p_tenant, p_customer, v_now, 'redeemed', p_id, p_points,
                                v_available - p_points, NULL, p_reason, p_actor);
    RETURN QUERY SELECT 'redeemed'::text, v_available - p_points;
END
$$;
