-- Deletes a customer and every entry of theirs (DELETE /customer/{customerId}), under the
-- customer's lock, so a write waiting for it applies after the delete, to a new account.
-- Coupons go with their redemptions; the journal and the reversals go too. False when there
-- is no such customer.
CREATE OR REPLACE FUNCTION rewardpoints_delete_customer(
    p_tenant varchar, p_customer varchar
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT rewardpoints_lock_account(p_tenant, p_customer, false) THEN
        RETURN false;
    END IF;
    DELETE FROM lot_usages WHERE tenant = p_tenant AND customer_id = p_customer;
    DELETE FROM reversals WHERE tenant = p_tenant AND customer_id = p_customer;
    DELETE FROM redemptions WHERE tenant = p_tenant AND customer_id = p_customer;
    DELETE FROM lots WHERE tenant = p_tenant AND customer_id = p_customer;
    DELETE FROM journal WHERE tenant = p_tenant AND customer_id = p_customer;
    DELETE FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer;
    RETURN true;
END
$$;
