-- addPoints: the customer's account locked, or created when missing, then the lot credited
-- (rewardpoints_add_lot). Answers ('added' or 'retry', the lot's id); a refusal is raised
-- (rewardpoints_raise_refusal), so an account this call created goes with it.
CREATE OR REPLACE FUNCTION rewardpoints_add(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_reference text, p_description text, p_points bigint, p_valid_until timestamptz,
    p_validity_months integer, p_hash varchar, p_reason text, p_actor text
) RETURNS TABLE (outcome text, entry_id varchar)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM rewardpoints_lock_account(p_tenant, p_customer, true);
    outcome := rewardpoints_add_lot(p_tenant, p_customer, p_id, p_client_id, p_reference,
                                    p_description, p_points, p_valid_until, p_validity_months,
                                    p_hash, 'added', p_reason, p_actor);
    PERFORM rewardpoints_raise_refusal(outcome);
    entry_id := p_id;
    RETURN NEXT;
END
$$;
