-- The ledger's clock: the time a write applies at, read once for each entry written (a lot, a
-- redemption; rewardpoints_entry_time, which also keeps a customer's entries in the order
-- they were written) while the write holds the customer's lock. (Bookkeeping times, such as
-- an account's, are rewardpoints_read_now()'s.) Production never sets rewardpoints.now and
-- gets clock_timestamp(); tests set it for their session, and the database then reads exactly
-- that moment.
CREATE OR REPLACE FUNCTION rewardpoints_now() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN COALESCE(NULLIF(current_setting('rewardpoints.now', true), '')::timestamptz,
                    clock_timestamp());
END
$$;
