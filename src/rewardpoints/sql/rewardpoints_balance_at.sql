-- The customer's balance as it stood at p_at (GET /customer/{customerId}/balance?at=): the
-- balance the last write at or before p_at left (its journal entry), less the points of the
-- lots that expired after that write and by p_at (rewardpoints_lapsed_between). That is the
-- lots created by then and not expired then, less what was redeemed or deducted by then, plus
-- what was reversed by then. 0 before the customer's first entry; NULL without an account.
CREATE OR REPLACE FUNCTION rewardpoints_balance_at(
    p_tenant varchar, p_customer varchar, p_at timestamptz
) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_last record;
BEGIN
    PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT j.created_at, j.balance_after INTO v_last FROM journal j
     WHERE j.tenant = p_tenant AND j.customer_id = p_customer AND j.created_at <= p_at
     ORDER BY j.created_at DESC, j.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    RETURN v_last.balance_after
        - rewardpoints_lapsed_between(p_tenant, p_customer, v_last.created_at, p_at, NULL);
END
$$;
