-- The points a lot still had when its validUntil passed: its remainder, less what reversals
-- gave back to it after it had expired (those are journal entries of their own, at the time of
-- the reversal). Expired lots are never drawn from, so this never changes once validUntil has
-- passed. History lists it as an 'expired' entry dated at validUntil when it is above zero.
CREATE OR REPLACE FUNCTION rewardpoints_lapsed(
    p_points bigint, p_used_points bigint, p_expired_returns bigint
) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_points - p_used_points - p_expired_returns
$$;
