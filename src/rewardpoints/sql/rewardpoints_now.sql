-- The ledger's clock: the time a write applies at, read once for each entry written (a lot, a
-- redemption; rewardpoints_entry_time) while the write holds the customer's lock, so the order
-- of createdAt is the order in which writes were applied. (Bookkeeping times, such as an
-- account's, are rewardpoints_read_now()'s.)
-- Production never sets rewardpoints.now and gets clock_timestamp(). Tests set it for their
-- session; each reading then moves it on by a microsecond, so writes applied one after another
-- still get distinct, increasing times.
CREATE OR REPLACE FUNCTION rewardpoints_now() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_set text := current_setting('rewardpoints.now', true);
    v_now timestamptz;
BEGIN
    IF v_set IS NULL OR v_set = '' THEN
        RETURN clock_timestamp();
    END IF;
    v_now := v_set::timestamptz;
    PERFORM set_config('rewardpoints.now', (v_now + interval '1 microsecond')::text, false);
    RETURN v_now;
END
$$;
