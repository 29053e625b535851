-- The customers of part `size` (bench/harness.py), in the tenant :tenant, written afresh on
-- each run: whatever an earlier run left in that tenant is deleted first. Each customer has
-- only open lots, one a second, valid for 36 months, no redemption; its journal holds their
-- entries, and its account the balance and window its last write would have stored, as
-- bench/seed.sql writes them:
--
--   size-1       1 lot of 1,000,000,000 points   the latencies' reference
--   size-1k      1,000 lots of 10 points
--   size-100k    100,000 lots of 10 points
--   build-1      1 lot of 10 points               addPoints on 32 connections: the reference
--   build-100k   100,000 lots of 10 points        addPoints on 32 connections
--
-- The foreign-key triggers are skipped (the rows are consistent by construction); the check
-- at the end proves the stored balances, before anything is committed.
\set ON_ERROR_STOP on

BEGIN;
SET LOCAL session_replication_role = replica;

DELETE FROM coupons WHERE tenant = :'tenant';
DELETE FROM reversals WHERE tenant = :'tenant';
DELETE FROM lot_usages WHERE tenant = :'tenant';
DELETE FROM redemptions WHERE tenant = :'tenant';
DELETE FROM lots WHERE tenant = :'tenant';
DELETE FROM journal WHERE tenant = :'tenant';
DELETE FROM accounts WHERE tenant = :'tenant';

-- Customer p_customer with p_lots open lots of p_points: the balance after lot j is j × points.
CREATE FUNCTION pg_temp.seed_open(
    p_tenant text, p_customer text, p_lots int, p_points bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := now() - interval '100 days';
BEGIN
    INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    SELECT p_tenant, p_customer || '-l' || lpad(j::text, 6, '0'), p_customer, 'order-' || j,
           'points added', p_points, 0, t0 + j * interval '1 second',
           t0 + j * interval '1 second' + interval '36 months', p_points * j,
           md5(p_customer || j)
    FROM generate_series(1, p_lots) AS j;
    INSERT INTO journal (tenant, customer_id, created_at, kind, entry_id, points, balance_after,
                         reference_id)
    SELECT tenant, customer_id, created_at, 'added', id, points, all_points_after_creation,
           reference_id
      FROM lots WHERE tenant = p_tenant AND customer_id = p_customer
     ORDER BY created_at;
    INSERT INTO accounts (tenant, customer_id, created_at, active_points, active_since,
                          active_until)
    VALUES (p_tenant, p_customer, t0, p_points * p_lots, now(),
            t0 + interval '1 second' + interval '36 months');
END $$;

SELECT pg_temp.seed_open(:'tenant', 'size-1', 1, 1000000000);
SELECT pg_temp.seed_open(:'tenant', 'size-1k', 1000, 10);
SELECT pg_temp.seed_open(:'tenant', 'size-100k', 100000, 10);
SELECT pg_temp.seed_open(:'tenant', 'build-1', 1, 10);
SELECT pg_temp.seed_open(:'tenant', 'build-100k', 100000, 10);

SELECT set_config('bench.size_tenant', :'tenant', true);
DO $$
DECLARE
    bad bigint;
BEGIN
    SELECT count(*) INTO bad FROM accounts a
    WHERE a.tenant = current_setting('bench.size_tenant')
      AND a.active_points IS DISTINCT FROM (
          SELECT sum(l.points - l.used_points) FROM lots l
           WHERE l.tenant = a.tenant AND l.customer_id = a.customer_id
             AND NOT l.used_up AND l.valid_until > a.active_since)
       OR a.active_until IS DISTINCT FROM (
          SELECT min(l.valid_until) FROM lots l
           WHERE l.tenant = a.tenant AND l.customer_id = a.customer_id AND NOT l.used_up);
    IF bad > 0 THEN RAISE EXCEPTION '% accounts whose stored balance is wrong', bad; END IF;
END $$;

COMMIT;
