-- What a client-given entry id already names among the customer's entries: NULL when
-- nothing, 'retry' when an entry of the same content (p_hash: the request's fingerprint),
-- 'conflict' when another. An id is unique per customer, across lots, redemptions (and
-- deductions) and reversals together; callers hold the customer's lock, so no other write can
-- take the id meanwhile.
CREATE OR REPLACE FUNCTION rewardpoints_entry_seen(
    p_tenant varchar, p_customer varchar, p_id varchar, p_hash varchar
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_existing varchar;
BEGIN
    SELECT h INTO v_existing FROM (
        SELECT request_hash AS h FROM lots
         WHERE tenant = p_tenant AND customer_id = p_customer AND id = p_id
        UNION ALL
        SELECT request_hash FROM redemptions
         WHERE tenant = p_tenant AND customer_id = p_customer AND id = p_id
        UNION ALL
        SELECT request_hash FROM reversals
         WHERE tenant = p_tenant AND customer_id = p_customer AND id = p_id
    ) AS earlier LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN CASE WHEN v_existing = p_hash THEN 'retry' ELSE 'conflict' END;
END
$$;
