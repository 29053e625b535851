-- One page of a customer's history, newest first (GET /customer/{customerId}/history): the
-- journal's entries (rewardpoints_record) merged with the 'expired' entries of the lots whose
-- validUntil has passed (p_now) with points left then (rewardpoints_lapsed), each dated at its
-- validUntil. At one instant an expiry comes before the writes (a lot is gone at its
-- validUntil). An expired entry's balance after is the balance the last write before it left
-- less what expired since, up to and with it (rewardpoints_lapsed_between).
-- The page starts after the cursor (p_at, p_phase, p_seq, p_lot): the last item of the page
-- before, which is a journal entry (phase 1, its seq) or a lot's expiry (phase 0, its id);
-- NULL p_at: the newest. p_kinds (NULL: all), p_from (inclusive) and p_to (exclusive) filter.
-- Both sources are read through their customer's index from the cursor on, at most p_limit
-- rows each, so a page costs the same however long the history is.
CREATE OR REPLACE FUNCTION rewardpoints_history(
    p_tenant varchar, p_customer varchar, p_now timestamptz, p_limit integer,
    p_at timestamptz, p_phase integer, p_seq bigint, p_lot varchar,
    p_kinds text[], p_from timestamptz, p_to timestamptz
) RETURNS TABLE (kind text, entry_id varchar, points bigint, created_at timestamptz,
                 balance_after bigint, reference_id text, reason text, actor text,
                 phase integer, seq bigint)
LANGUAGE sql STABLE AS $$
    SELECT h.kind, h.entry_id, h.points, h.created_at,
           CASE WHEN h.phase = 1 THEN h.balance_after ELSE (
               SELECT COALESCE(MAX(w.balance_after), 0)
                      - rewardpoints_lapsed_between(
                            p_tenant, p_customer, COALESCE(MAX(w.created_at), '-infinity'),
                            h.created_at, h.entry_id)
                 FROM (SELECT j.created_at, j.balance_after FROM journal j
                        WHERE j.tenant = p_tenant AND j.customer_id = p_customer
                          AND j.created_at < h.created_at
                        ORDER BY j.created_at DESC, j.seq DESC LIMIT 1) AS w)
           END,
           h.reference_id, h.reason, h.actor, h.phase, h.seq
    FROM (
        (SELECT j.kind, j.entry_id, j.points, j.created_at, j.balance_after, j.reference_id,
                j.reason, j.actor, 1 AS phase, j.seq
           FROM journal j
          WHERE j.tenant = p_tenant AND j.customer_id = p_customer
            AND (p_at IS NULL OR (j.created_at, j.seq)
                                 < (p_at, CASE WHEN p_phase = 1 THEN p_seq ELSE 0 END))
            AND (p_kinds IS NULL OR j.kind = ANY (p_kinds))
            AND (p_from IS NULL OR j.created_at >= p_from)
            AND (p_to IS NULL OR j.created_at < p_to)
          ORDER BY j.created_at DESC, j.seq DESC
          LIMIT p_limit)
        UNION ALL
        (SELECT 'expired', l.id,
                rewardpoints_lapsed(l.points, l.used_points, l.expired_returns),
                l.valid_until, NULL::bigint, l.reference_id, NULL, NULL, 0, NULL::bigint
           FROM lots l
          WHERE l.tenant = p_tenant AND l.customer_id = p_customer AND NOT l.used_up
            AND l.valid_until <= p_now
            AND rewardpoints_lapsed(l.points, l.used_points, l.expired_returns) > 0
            AND (p_at IS NULL OR l.valid_until < p_at
                 OR (l.valid_until = p_at AND p_phase = 1)
                 OR (l.valid_until = p_at AND p_phase = 0 AND l.id < p_lot))
            AND (p_kinds IS NULL OR 'expired' = ANY (p_kinds))
            AND (p_from IS NULL OR l.valid_until >= p_from)
            AND (p_to IS NULL OR l.valid_until < p_to)
          ORDER BY l.valid_until DESC, l.id DESC
          LIMIT p_limit)
    ) AS h
    ORDER BY h.created_at DESC, h.phase DESC, h.seq DESC, h.entry_id DESC
    LIMIT p_limit
$$;
