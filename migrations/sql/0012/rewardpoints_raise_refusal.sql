-- Raises a refused write's outcome (rewardpoints_add_lot's), so everything its call did
-- before, such as creating the customer's account, is rolled back with it: RP409 for an id
-- that names another entry, RP400 for a validUntil not after the write's time.
CREATE OR REPLACE FUNCTION rewardpoints_raise_refusal(p_outcome text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_outcome = 'conflict' THEN
        RAISE EXCEPTION 'entry id already used' USING ERRCODE = 'RP409';
    ELSIF p_outcome = 'invalid' THEN
        RAISE EXCEPTION 'validUntil must be in the future' USING ERRCODE = 'RP400';
    END IF;
END
$$;
