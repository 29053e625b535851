-- deductPoints, the clawback for a return: takes p_points from the customer's lots, the lot
-- p_first_lot first when it is open, then oldest first (rewardpoints_draw_plan). A deduction is
-- a redemption row marked deducted, so Emporix's summary lists it among the redemptions and the
-- lots drawn from show it in usedWith. When the balance (rewardpoints_expire) is short it is
-- refused ('insufficient', with the balance), unless p_allow_debt: then what the open lots
-- cannot give is owed (the redemption's owed, the account's debt), the balance goes negative,
-- and the next lots pay it first (rewardpoints_add_lot).
-- One row per lot drawn from (lot_id NULL when none): the outcome ('deducted', 'retry' with
-- the first deduction's points and balance after (a dry run: the balance now, twice), 'not_found', 'conflict', 'unknown_lot',
-- 'insufficient'), the balance before and after, the lot and the points taken from it. With
-- p_dry nothing is written and no lock is taken: the rows are what the deduction would do now.
CREATE OR REPLACE FUNCTION rewardpoints_deduct(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_reference text, p_description text, p_points bigint, p_first_lot varchar,
    p_allow_debt boolean, p_reason text, p_actor text, p_hash varchar, p_dry boolean
) RETURNS TABLE (outcome text, points_before bigint, points_after bigint, drawn_lot varchar,
                 drawn_points bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_seen text;
    v_available bigint;
    v_open bigint;
    v_first_expiry timestamptz;
    v_taken bigint;
    v_owed bigint;
    v_row record;
BEGIN
    IF p_dry THEN
        PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, NULL::varchar,
                                NULL::bigint;
            RETURN;
        END IF;
    ELSIF NOT rewardpoints_lock_account(p_tenant, p_customer, false) THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    v_now := rewardpoints_entry_time(p_tenant, p_customer);
    IF p_dry THEN
        SELECT a.available, a.open_points INTO v_available, v_open
          FROM rewardpoints_available(p_tenant, p_customer, v_now) AS a;
    ELSE
        SELECT a.available, a.open_points, a.first_expiry
          INTO v_available, v_open, v_first_expiry
          FROM rewardpoints_expire(p_tenant, p_customer, v_now) AS a;
    END IF;
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen = 'retry' AND p_dry THEN
            RETURN QUERY SELECT 'retry'::text, v_available, v_available, NULL::varchar,
                                NULL::bigint;
            RETURN;
        ELSIF v_seen = 'retry' THEN
            RETURN QUERY SELECT 'retry'::text, r.points, r.all_points_after_creation,
                                NULL::varchar, NULL::bigint
              FROM redemptions r
             WHERE r.tenant = p_tenant AND r.customer_id = p_customer AND r.id = p_id;
            RETURN;
        ELSIF v_seen IS NOT NULL THEN
            RETURN QUERY SELECT v_seen, NULL::bigint, NULL::bigint, NULL::varchar, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    IF p_first_lot IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM lots l
         WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = p_first_lot) THEN
        RETURN QUERY SELECT 'unknown_lot'::text, v_available, NULL::bigint, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    IF v_available < p_points AND NOT p_allow_debt THEN
        RETURN QUERY SELECT 'insufficient'::text, v_available, NULL::bigint, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    IF p_dry THEN
        v_taken := 0;
        FOR v_row IN
            SELECT p.lot_id, p.take FROM rewardpoints_draw_plan(
                p_tenant, p_customer, LEAST(p_points, v_open), v_now, p_first_lot) AS p
        LOOP
            RETURN QUERY SELECT 'deducted'::text, v_available, v_available - p_points,
                                v_row.lot_id, v_row.take;
            v_taken := v_taken + 1;
        END LOOP;
        IF v_taken = 0 THEN
            RETURN QUERY SELECT 'deducted'::text, v_available, v_available - p_points,
                                NULL::varchar, NULL::bigint;
        END IF;
        RETURN;
    END IF;
    INSERT INTO redemptions (tenant, customer_id, id, description, points, created_at,
                             all_points_after_creation, request_hash, deducted)
    VALUES (p_tenant, p_customer, p_id, p_description, p_points, v_now,
            v_available - p_points, p_hash, true);
    v_taken := rewardpoints_draw(p_tenant, p_customer, p_id, LEAST(p_points, v_open), v_now,
                                 p_first_lot);
    IF v_taken <> LEAST(p_points, v_open) THEN
        RAISE EXCEPTION 'the balance stored for customer % is not what its lots hold',
            p_customer;
    END IF;
    v_owed := p_points - v_taken;
    IF v_owed > 0 THEN
        UPDATE redemptions r SET owed = v_owed
         WHERE r.tenant = p_tenant AND r.customer_id = p_customer AND r.id = p_id;
    END IF;
    UPDATE accounts a
       SET debt = a.debt + v_owed, active_points = v_available - p_points, active_since = v_now,
           active_until = COALESCE(v_first_expiry, 'infinity')
     WHERE a.tenant = p_tenant AND a.customer_id = p_customer;
    PERFORM rewardpoints_record(p_tenant, p_customer, v_now, 'deducted', p_id, p_points,
                                v_available - p_points, p_reference, p_reason, p_actor);
    RETURN QUERY
        SELECT 'deducted'::text, v_available, v_available - p_points, u.lot_id, u.points
          FROM lot_usages u
         CROSS JOIN LATERAL (  -- one probe of the lots' key per usage (OFFSET 0: never a join)
               SELECT l.created_at FROM lots l
                WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = u.lot_id
               OFFSET 0) AS l
         WHERE u.tenant = p_tenant AND u.customer_id = p_customer AND u.redemption_id = p_id
         ORDER BY u.lot_id = p_first_lot DESC NULLS LAST, l.created_at, u.lot_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'deducted'::text, v_available, v_available - p_points,
                            NULL::varchar, NULL::bigint;
    END IF;
END
$$;
