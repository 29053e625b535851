-- addPoints with dryRun: what rewardpoints_add would answer now, written nowhere and under no
-- lock. One row: the outcome ('added', 'retry', 'conflict', 'invalid'; the same rules:
-- rewardpoints_entry_seen, rewardpoints_valid_until), the balance before and after
-- (rewardpoints_available; 0 before for a customer without an account, which the addition
-- would create) and the lot it would write: the client's id (NULL when the server would make
-- one) and its points.
CREATE OR REPLACE FUNCTION rewardpoints_preview_add(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_points bigint, p_valid_until timestamptz, p_validity_months integer, p_hash varchar
) RETURNS TABLE (outcome text, points_before bigint, points_after bigint, drawn_lot varchar,
                 drawn_points bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := rewardpoints_entry_time(p_tenant, p_customer);
    v_seen text;
    v_available bigint;
BEGIN
    SELECT COALESCE((SELECT a.available
                       FROM rewardpoints_available(p_tenant, p_customer, v_now) AS a), 0)
      INTO v_available;
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen IS NOT NULL THEN
            RETURN QUERY SELECT v_seen, v_available, v_available, NULL::varchar, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    IF rewardpoints_valid_until(v_now, p_valid_until, p_validity_months) IS NULL THEN
        RETURN QUERY SELECT 'invalid'::text, v_available, v_available, NULL::varchar,
                            NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'added'::text, v_available, v_available + p_points,
                        CASE WHEN p_client_id THEN p_id END, p_points;
END
$$;
