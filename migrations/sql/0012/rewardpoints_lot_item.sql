-- A lot as an item of its customer's summary: the JSON object Emporix's pointsSummaryOut
-- lists, keys in its order, compact, strings escaped as json.dumps(ensure_ascii=False) does.
-- Stored in lots.summary_item by the redemption that spends a lot's last point (a used-up lot
-- never changes again), and read by summaries instead of being built again. documents.py
-- builds the same bytes for the lots still open; test_documents checks that the two agree.
CREATE OR REPLACE FUNCTION rewardpoints_lot_item(
    p_tenant varchar, p_customer varchar, p_id varchar, p_reference text, p_description text,
    p_points bigint, p_used_points bigint, p_created_at timestamptz, p_valid_until timestamptz,
    p_all_points_after_creation bigint
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN '{"id":' || to_json(p_id::text)::text
    || ',"reference-id":' || COALESCE(to_json(p_reference)::text, 'null')
    || ',"description":' || to_json(p_description)::text
    || ',"points":' || p_points::text
    || ',"createdAt":"'
    || to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') || '+00:00"'
    || ',"allPointsAfterCreation":' || p_all_points_after_creation::text
    || ',"usedPoints":' || p_used_points::text
    || ',"validUntil":"'
    || to_char(p_valid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS') || '+00:00"'
    || ',"usedWith":[' || COALESCE((
        SELECT string_agg(item, ',') FROM (
            SELECT to_json(u.redemption_id::text)::text AS item
            FROM lot_usages u
            WHERE u.tenant = p_tenant AND u.customer_id = p_customer AND u.lot_id = p_id
            ORDER BY u.created_at, u.redemption_id) AS used), '')
    || ']}';
END
$$;
