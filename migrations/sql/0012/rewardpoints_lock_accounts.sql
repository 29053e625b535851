-- The accounts of a call that applies several writes at once (rewardpoints_add_many,
-- rewardpoints_redeem_many), locked; one flag per write, true when its account is held and
-- the write can be applied now. With one customer its lock is waited for, as a write alone
-- would. With several, only those free at once are taken (SKIP LOCKED), in key order, so no
-- call waits for another's accounts while it holds some of its own. A missing account is
-- never created here: its writes come back false and the service sends them alone.
CREATE OR REPLACE FUNCTION rewardpoints_lock_accounts(
    p_tenants varchar[], p_customers varchar[]
) RETURNS boolean[]
LANGUAGE plpgsql AS $$
DECLARE
    v_locked text[];
    v_apply boolean[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(p_tenants, p_customers) AS k(tenant, customer_id)
                    WHERE k.tenant <> p_tenants[1] OR k.customer_id <> p_customers[1]) THEN
        RETURN array_fill(
            rewardpoints_lock_account(p_tenants[1], p_customers[1], false),
            ARRAY[cardinality(p_customers)]);
    END IF;
    -- A tenant holds no '/', so tenant || '/' || customer names one account.
    SELECT array_agg(locked.tenant || '/' || locked.customer_id) INTO v_locked FROM (
        SELECT a.tenant, a.customer_id FROM accounts a
         WHERE (a.tenant, a.customer_id) IN (
               SELECT k.tenant, k.customer_id
                 FROM unnest(p_tenants, p_customers) AS k(tenant, customer_id))
         ORDER BY a.tenant, a.customer_id
           FOR UPDATE SKIP LOCKED) AS locked;
    SELECT array_agg(COALESCE(k.tenant || '/' || k.customer_id = ANY(v_locked), false)
                     ORDER BY k.n)
      INTO v_apply
      FROM unnest(p_tenants, p_customers) WITH ORDINALITY AS k(tenant, customer_id, n);
    RETURN v_apply;
END
$$;
