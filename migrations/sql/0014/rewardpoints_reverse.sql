-- reversePoints: gives back p_points (NULL: all it still holds) of the customer's redemption
-- p_redemption, for a cancelled order, to the lots it drew from (rewardpoints_reverse_plan):
-- each lot's usedPoints goes down, and the redemption leaves a lot's usedWith when it holds
-- nothing of it any more. A lot expired since takes its share back but does not count: the
-- share is recorded in the journal as expired at once, and kept on the lot (expired_returns),
-- so what the lot had left at its validUntil stays as it was. The redemption's reversed points
-- go up: reversals never add up to more than it spent. Deductions are not reversed.
-- One row per lot given back to: the outcome ('reversed', 'retry' with the first reversal's
-- figures and the balance now, 'not_found', 'conflict', 'unknown_redemption', 'too_many' with the points left to
-- reverse), the points reversed, restored and come back expired, the balance before and
-- after, the lot and its share. With p_dry nothing is written and no lock is taken.
CREATE OR REPLACE FUNCTION rewardpoints_reverse(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_redemption varchar, p_points bigint, p_reason text, p_actor text, p_hash varchar,
    p_dry boolean
) RETURNS TABLE (outcome text, reversed_total bigint, restored_total bigint,
                 expired_total bigint, points_before bigint, points_after bigint,
                 given_lot varchar, given_points bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
    v_seen text;
    v_redemption record;
    v_left bigint;
    v_points bigint;
    v_restored bigint;
    v_expired bigint;
    v_available bigint;
    v_first_expiry timestamptz;
    v_valid_until timestamptz;
    v_balance bigint;
    v_lots varchar[];
    v_shares bigint[];
    v_expireds boolean[];
BEGIN
    IF p_dry THEN
        PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::varchar, NULL::bigint;
            RETURN;
        END IF;
    ELSIF NOT rewardpoints_lock_account(p_tenant, p_customer, false) THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::bigint, NULL::varchar, NULL::bigint;
        RETURN;
    END IF;
    v_now := rewardpoints_entry_time(p_tenant, p_customer);
    IF p_dry THEN
        SELECT a.available INTO v_available
          FROM rewardpoints_available(p_tenant, p_customer, v_now) AS a;
    ELSE
        SELECT a.available, a.first_expiry INTO v_available, v_first_expiry
          FROM rewardpoints_expire(p_tenant, p_customer, v_now) AS a;
    END IF;
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen = 'retry' THEN
            RETURN QUERY SELECT 'retry'::text, v.points, v.restored_points, v.expired_points,
                                v_available, v_available, NULL::varchar, NULL::bigint
              FROM reversals v
             WHERE v.tenant = p_tenant AND v.customer_id = p_customer AND v.id = p_id;
            RETURN;
        ELSIF v_seen IS NOT NULL THEN
            RETURN QUERY SELECT v_seen, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::varchar, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT r.points - r.reversed_points AS held INTO v_redemption FROM redemptions r
     WHERE r.tenant = p_tenant AND r.customer_id = p_customer AND r.id = p_redemption
       AND NOT r.deducted;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown_redemption'::text, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::bigint, NULL::bigint, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    v_left := v_redemption.held;
    v_points := COALESCE(p_points, v_left);
    IF v_points > v_left OR v_points < 1 THEN
        RETURN QUERY SELECT 'too_many'::text, v_left, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::varchar, NULL::bigint;
        RETURN;
    END IF;
    SELECT array_agg(p.lot_id), array_agg(p.share), array_agg(p.expired)
      INTO v_lots, v_shares, v_expireds
      FROM rewardpoints_reverse_plan(p_tenant, p_customer, p_redemption, v_points, v_now) AS p;
    v_restored := 0;
    v_expired := 0;
    FOR i IN 1 .. COALESCE(cardinality(v_lots), 0) LOOP
        IF v_expireds[i] THEN
            v_expired := v_expired + v_shares[i];
        ELSE
            v_restored := v_restored + v_shares[i];
        END IF;
    END LOOP;
    IF NOT p_dry THEN
        FOR i IN 1 .. COALESCE(cardinality(v_lots), 0) LOOP
            UPDATE lot_usages u SET points = u.points - v_shares[i]
             WHERE u.tenant = p_tenant AND u.customer_id = p_customer AND u.lot_id = v_lots[i]
               AND u.redemption_id = p_redemption AND u.points > v_shares[i];
            IF NOT FOUND THEN
                DELETE FROM lot_usages u
                 WHERE u.tenant = p_tenant AND u.customer_id = p_customer
                   AND u.lot_id = v_lots[i] AND u.redemption_id = p_redemption;
            END IF;
            -- No longer used up: its summary item is built again on each read. A lot expired
            -- takes its share back marked expired, so no draw meets it (rewardpoints_expire);
            -- one still valid counts again, and may expire before the window stored ends.
            UPDATE lots l
               SET used_points = l.used_points - v_shares[i], summary_item = NULL,
                   expired_returns = l.expired_returns
                       + CASE WHEN v_expireds[i] THEN v_shares[i] ELSE 0 END,
                   expired = l.expired OR v_expireds[i]
             WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = v_lots[i]
            RETURNING l.valid_until INTO v_valid_until;
            IF NOT v_expireds[i] THEN
                v_first_expiry := LEAST(v_first_expiry, v_valid_until);
            END IF;
        END LOOP;
        UPDATE redemptions r SET reversed_points = r.reversed_points + v_points
         WHERE r.tenant = p_tenant AND r.customer_id = p_customer AND r.id = p_redemption;
        -- The redemption's item and those of the lots given back to have changed: the summary
        -- segments that hold them go, and a later summary makes them again (documents.py).
        DELETE FROM summary_segments s
         WHERE s.tenant = p_tenant AND s.customer_id = p_customer
           AND ((s.list = 'redemptions' AND EXISTS (
                    SELECT 1 FROM redemptions r
                     WHERE r.tenant = p_tenant AND r.customer_id = p_customer
                       AND r.id = p_redemption
                       AND (r.created_at, r.id) >= (s.first_at, s.first_id)
                       AND (r.created_at, r.id) <= (s.last_at, s.last_id)))
             OR (s.list = 'lots' AND EXISTS (
                    SELECT 1 FROM lots l
                     WHERE l.tenant = p_tenant AND l.customer_id = p_customer
                       AND l.id = ANY (v_lots)
                       AND (l.created_at, l.id) >= (s.first_at, s.first_id)
                       AND (l.created_at, l.id) <= (s.last_at, s.last_id))));
        INSERT INTO reversals (tenant, customer_id, id, redemption_id, points, restored_points,
                               expired_points, created_at, request_hash)
        VALUES (p_tenant, p_customer, p_id, p_redemption, v_points, v_restored, v_expired,
                v_now, p_hash);
        UPDATE accounts a
           SET active_points = v_available + v_restored, active_since = v_now,
               active_until = COALESCE(v_first_expiry, 'infinity')
         WHERE a.tenant = p_tenant AND a.customer_id = p_customer;
        -- The reversal brings back all its points; those that came back to an expired lot
        -- expire at once, one entry per lot, so each entry's balance follows from the last.
        v_balance := v_available + v_points;
        PERFORM rewardpoints_record(p_tenant, p_customer, v_now, 'reversed', p_id, v_points,
                                    v_balance, p_redemption, p_reason, p_actor);
        FOR i IN 1 .. COALESCE(cardinality(v_lots), 0) LOOP
            IF v_expireds[i] THEN
                v_balance := v_balance - v_shares[i];
                PERFORM rewardpoints_record(
                    p_tenant, p_customer, v_now, 'expired', v_lots[i], v_shares[i], v_balance,
                    (SELECT l.reference_id FROM lots l
                      WHERE l.tenant = p_tenant AND l.customer_id = p_customer
                        AND l.id = v_lots[i]),
                    p_reason, p_actor);
            END IF;
        END LOOP;
    END IF;
    RETURN QUERY SELECT 'reversed'::text, v_points, v_restored, v_expired, v_available,
                        v_available + v_restored, s.lot_id, s.share
      FROM unnest(COALESCE(v_lots, ARRAY[NULL]::varchar[]),
                  COALESCE(v_shares, ARRAY[NULL]::bigint[])) AS s(lot_id, share);
END
$$;
