-- The time of an entry a write is about to record for a customer whose account it holds
-- locked: the clock (rewardpoints_now), but never before the customer's last write, whose
-- time the account keeps (active_since). So createdAt increases in the order writes were
-- applied even if the database's clock is stepped back (a time sync, a failover to a server
-- whose clock is behind), and the oldest-first order of spending stays the order of writing.
CREATE OR REPLACE FUNCTION rewardpoints_entry_time(
    p_tenant varchar, p_customer varchar
) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := rewardpoints_now();
    v_last timestamptz;
BEGIN
    SELECT active_since INTO v_last FROM accounts
     WHERE tenant = p_tenant AND customer_id = p_customer;
    IF v_last IS NOT NULL AND v_last >= v_now THEN
        RETURN v_last + interval '1 microsecond';
    END IF;
    RETURN v_now;
END
$$;
