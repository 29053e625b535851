-- Locks the customer's account row until the transaction ends: every write to a customer's
-- entries holds it, so no two of them interleave. False when the account does not exist;
-- with p_create it is created instead (and so held). An insert or delete of the same account
-- by another transaction is waited for and the lock tried again, so a write never lands on an
-- account that is gone.
CREATE OR REPLACE FUNCTION rewardpoints_lock_account(
    p_tenant varchar, p_customer varchar, p_create boolean
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    FOR attempt IN 1 .. 100 LOOP
        PERFORM 1 FROM accounts
         WHERE tenant = p_tenant AND customer_id = p_customer FOR UPDATE;
        IF FOUND THEN
            RETURN true;
        END IF;
        IF NOT p_create THEN
            RETURN false;
        END IF;
        INSERT INTO accounts (tenant, customer_id, created_at)
        VALUES (p_tenant, p_customer, rewardpoints_read_now())
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            RETURN true;
        END IF;
    END LOOP;
    -- Created and deleted by others all along: the service runs the whole call again.
    RAISE EXCEPTION 'account % kept changing', p_customer USING ERRCODE = '40001';
END
$$;
