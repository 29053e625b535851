-- The moment reads measure expiry at: their transaction's start (one moment for a whole
-- summary), or the time tests set in rewardpoints.now (see rewardpoints_now). A plain SQL
-- function, so PostgreSQL inlines it into the statements that read it.
CREATE OR REPLACE FUNCTION rewardpoints_read_now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(NULLIF(current_setting('rewardpoints.now', true), '')::timestamptz, now())
$$;
