-- Redemptions waiting in one worker at the same moment, applied in one transaction, so they
-- share one commit (direct.py, Coalesced). Each is applied by rewardpoints_redeem, in the
-- order given, on the accounts rewardpoints_lock_accounts could lock; one row per redemption,
-- in that order: rewardpoints_redeem's answer, or 'busy' for one left undone, which the
-- service sends again alone.
CREATE OR REPLACE FUNCTION rewardpoints_redeem_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_descriptions text[], p_points bigint[], p_hashes varchar[], p_reasons text[],
    p_actors text[]
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_apply boolean[] := rewardpoints_lock_accounts(p_tenants, p_customers);
    v_result record;
BEGIN
    FOR i IN 1 .. cardinality(p_ids) LOOP
        IF v_apply[i] THEN
            SELECT r.outcome, r.available INTO v_result
              FROM rewardpoints_redeem(p_tenants[i], p_customers[i], p_ids[i], p_client_ids[i],
                                       p_descriptions[i], p_points[i], p_hashes[i],
                                       p_reasons[i], p_actors[i]) AS r;
            outcome := v_result.outcome;
            available := v_result.available;
        ELSE
            outcome := 'busy';
            available := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
