-- Gives back the points of a redemption whose coupon could not be issued, as Emporix does: a
-- new lot (rewardpoints_add_lot) with no reference-id, valid p_validity_months from its own
-- creation, recorded in the journal as a 'chargeback'; the redemption stays as it was. Only to an account that is still there: a customer
-- deleted since the redemption took its points with it and is not brought back ('not_found',
-- nothing written). Otherwise answers as rewardpoints_add_lot.
CREATE OR REPLACE FUNCTION rewardpoints_charge_back(
    p_tenant varchar, p_customer varchar, p_id varchar, p_description text, p_points bigint,
    p_validity_months integer, p_hash varchar, p_actor text
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT rewardpoints_lock_account(p_tenant, p_customer, false) THEN
        RETURN 'not_found';
    END IF;
    RETURN rewardpoints_add_lot(p_tenant, p_customer, p_id, false, NULL, p_description, p_points,
                                NULL, p_validity_months, p_hash, 'chargeback', NULL, p_actor);
END
$$;
