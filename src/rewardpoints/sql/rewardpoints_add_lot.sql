-- Credits a lot to a customer whose account the caller holds locked: the one place a lot is
-- written (addPoints, startPoints, an order's points, a chargeback). Answers 'added';
-- 'retry' when the client-given id was written before with the same content (nothing
-- changes, even once that lot's validUntil has passed); 'conflict' when the id names another
-- of the customer's entries; 'invalid' when validUntil is not after now
-- (rewardpoints_valid_until). Only 'added' writes: the lot, its journal entry (p_kind: added or
-- chargeback; rewardpoints_record) and the account's balance. A customer in debt (a deduction
-- beyond the balance) pays it from the new lot first, oldest deduction first: the lot records
-- those draws as it would a redemption's. The account keeps its active points after the write
-- and the earliest expiry among the lots they count, so a balance is one row
-- (rewardpoints_available), and lots that expired since the last write are read once
-- (rewardpoints_expire).
CREATE OR REPLACE FUNCTION rewardpoints_add_lot(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_reference text, p_description text, p_points bigint, p_valid_until timestamptz,
    p_validity_months integer, p_hash varchar, p_kind text, p_reason text, p_actor text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := rewardpoints_entry_time(p_tenant, p_customer);
    v_seen text;
    v_valid_until timestamptz;
    v_balance bigint;
    v_debt bigint;
    v_first_expiry timestamptz;
    v_left bigint;
    v_take bigint;
    v_owed record;
BEGIN
    IF p_client_id THEN
        v_seen := rewardpoints_entry_seen(p_tenant, p_customer, p_id, p_hash);
        IF v_seen IS NOT NULL THEN
            RETURN v_seen;
        END IF;
    END IF;
    v_valid_until := rewardpoints_valid_until(v_now, p_valid_until, p_validity_months);
    IF v_valid_until IS NULL THEN
        RETURN 'invalid';
    END IF;
    SELECT a.available, a.debt, a.first_expiry INTO v_balance, v_debt, v_first_expiry
      FROM rewardpoints_expire(p_tenant, p_customer, v_now) AS a;
    INSERT INTO lots (tenant, customer_id, id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    VALUES (p_tenant, p_customer, p_id, p_reference, p_description, p_points, 0,
            v_now, v_valid_until, v_balance + p_points, p_hash);
    IF v_debt > 0 THEN
        v_left := p_points;
        FOR v_owed IN
            SELECT r.id, r.owed FROM redemptions r
             WHERE r.tenant = p_tenant AND r.customer_id = p_customer AND r.owed > 0
             ORDER BY r.created_at, r.id
        LOOP
            EXIT WHEN v_left = 0;
            v_take := LEAST(v_left, v_owed.owed);
            INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points,
                                    created_at)
            VALUES (p_tenant, p_customer, p_id, v_owed.id, v_take, v_now);
            UPDATE redemptions r SET owed = r.owed - v_take
             WHERE r.tenant = p_tenant AND r.customer_id = p_customer AND r.id = v_owed.id;
            v_left := v_left - v_take;
        END LOOP;
        UPDATE lots l
           SET used_points = p_points - v_left,
               summary_item = CASE WHEN v_left = 0 THEN rewardpoints_lot_item(
                   l.tenant, l.customer_id, l.id, l.reference_id, l.description, l.points,
                   p_points, l.created_at, l.valid_until, l.all_points_after_creation) END
         WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND l.id = p_id;
        UPDATE accounts a SET debt = a.debt - (p_points - v_left)
         WHERE a.tenant = p_tenant AND a.customer_id = p_customer;
    END IF;
    UPDATE accounts
       SET active_points = v_balance + p_points, active_since = v_now,
           active_until = LEAST(v_first_expiry, v_valid_until)
     WHERE tenant = p_tenant AND customer_id = p_customer;
    PERFORM rewardpoints_record(p_tenant, p_customer, v_now, p_kind, p_id, p_points,
                                v_balance + p_points, p_reference, p_reason, p_actor);
    RETURN 'added';
END
$$;
