-- Creates a customer's account (POST /customer/{customerId}), with p_start its first lot
-- through rewardpoints_add_lot (startPoints). Answers 'created', or 'exists' when the account
-- was there already (nothing changes); a refused start lot is raised
-- (rewardpoints_raise_refusal), so the new account goes with it.
CREATE OR REPLACE FUNCTION rewardpoints_create_customer(
    p_tenant varchar, p_customer varchar, p_start boolean, p_id varchar, p_client_id boolean,
    p_reference text, p_description text, p_points bigint, p_valid_until timestamptz,
    p_validity_months integer, p_hash varchar, p_reason text, p_actor text
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO accounts (tenant, customer_id, created_at)
    VALUES (p_tenant, p_customer, rewardpoints_read_now())
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'exists';
    END IF;
    IF p_start THEN
        PERFORM rewardpoints_raise_refusal(
            rewardpoints_add_lot(p_tenant, p_customer, p_id, p_client_id, p_reference,
                                 p_description, p_points, p_valid_until, p_validity_months,
                                 p_hash, 'added', p_reason, p_actor));
    END IF;
    RETURN 'created';
END
$$;
