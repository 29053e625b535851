-- A new lot's validUntil: the one given, else p_validity_months calendar months after p_now, in
-- UTC (Jan 31 + 1 month = Feb 28 or 29). NULL when it would not be after p_now: refused.
CREATE OR REPLACE FUNCTION rewardpoints_valid_until(
    p_now timestamptz, p_valid_until timestamptz, p_validity_months integer
) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET timezone TO 'UTC' AS $$
DECLARE
    v_valid_until timestamptz := COALESCE(p_valid_until,
                                          p_now + make_interval(months => p_validity_months));
BEGIN
    IF v_valid_until <= p_now THEN
        RETURN NULL;
    END IF;
    RETURN v_valid_until;
END
$$;
