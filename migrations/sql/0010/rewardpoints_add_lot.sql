-- Credits a lot to a customer whose account the caller holds locked: the one place a lot is
-- written (addPoints, startPoints, an order's points, a chargeback). Answers 'added';
-- 'retry' when the client-given id was written before with the same content (nothing
-- changes, even once that lot's validUntil has passed); 'conflict' when the id names another
-- of the customer's entries; 'invalid' when validUntil is not after now. Only 'added' writes.
-- validUntil defaults to p_validity_months calendar months after now, in UTC (Jan 31 + 1
-- month = Feb 28 or 29). The account keeps its active points after the write and the earliest
-- expiry among the lots they count, so a balance is one row (the balance read in ledger.py).
CREATE OR REPLACE FUNCTION rewardpoints_add_lot(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_reference text, p_description text, p_points bigint, p_valid_until timestamptz,
    p_validity_months integer, p_hash varchar
) RETURNS text
LANGUAGE plpgsql SET timezone TO 'UTC' AS $$
DECLARE
    v_now timestamptz := rewardpoints_entry_time(p_tenant, p_customer);
    v_seen text;
    v_valid_until timestamptz;
    v_balance bigint;
    v_first_expiry timestamptz;
BEGIN
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen IS NOT NULL THEN
            RETURN v_seen;
        END IF;
    END IF;
    v_valid_until := COALESCE(p_valid_until, v_now + make_interval(months => p_validity_months));
    IF v_valid_until <= v_now THEN
        RETURN 'invalid';
    END IF;
    SELECT COALESCE(SUM(points - used_points), 0), MIN(valid_until)
      INTO v_balance, v_first_expiry FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND NOT used_up AND valid_until > v_now;
    INSERT INTO lots (tenant, customer_id, id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    VALUES (p_tenant, p_customer, p_id, p_reference, p_description, p_points, 0,
            v_now, v_valid_until, v_balance + p_points, p_hash);
    UPDATE accounts
       SET active_points = v_balance + p_points, active_since = v_now,
           active_until = LEAST(v_first_expiry, v_valid_until)
     WHERE tenant = p_tenant AND customer_id = p_customer;
    RETURN 'added';
END
$$;
