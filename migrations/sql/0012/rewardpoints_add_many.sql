-- Additions waiting in one worker at the same moment, applied in one transaction, so they
-- share one commit (direct.py, Coalesced). Each is applied by rewardpoints_add_lot, in the
-- order given, on the accounts rewardpoints_lock_accounts could lock; one row per addition,
-- in that order: its outcome ('added', 'retry', 'conflict', 'invalid', or 'busy' for one left
-- undone, which the service sends again alone) and its lot's id. Refusals are answered, not
-- raised: they write nothing, and the other additions of the call stand.
CREATE OR REPLACE FUNCTION rewardpoints_add_many(
    p_tenants varchar[], p_customers varchar[], p_ids varchar[], p_client_ids boolean[],
    p_references text[], p_descriptions text[], p_points bigint[], p_valid_untils timestamptz[],
    p_validity_months integer[], p_hashes varchar[], p_reasons text[], p_actors text[]
) RETURNS TABLE (outcome text, entry_id varchar)
LANGUAGE plpgsql AS $$
DECLARE
    v_apply boolean[] := rewardpoints_lock_accounts(p_tenants, p_customers);
BEGIN
    FOR i IN 1 .. cardinality(p_ids) LOOP
        entry_id := p_ids[i];
        IF v_apply[i] THEN
            outcome := rewardpoints_add_lot(p_tenants[i], p_customers[i], p_ids[i],
                                            p_client_ids[i], p_references[i],
                                            p_descriptions[i], p_points[i], p_valid_untils[i],
                                            p_validity_months[i], p_hashes[i], 'added',
                                            p_reasons[i], p_actors[i]);
        ELSE
            outcome := 'busy';
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
