-- The benchmark's data, written with INSERT ... SELECT generate_series into a database that
-- `rewardpoints migrate` has just built. bench/harness.py runs it with psql and these variables:
--
--   tenant          the main tenant: uniform customers, the hot customer, the two histories
--   customers       uniform customers c000001 .. (5 lots of 1,000 points each, all open)
--   long_lots       lots of the customer "long" (10 points each; 99 % used up by redemptions)
--   big_tenant      tenant of the streamed summaryBatch: big_customers × 5 lots, and among
--   big_customers   them one whale per entry of big_whales (its lots, as an array: '{20000,...}')
--   big_whales
--   mid_tenant      the same shape, a tenth of the size: is the stream's memory flat?
--   mid_customers
--   mid_whales
--
-- Every row keeps the ledger's rules (CONTRACT.md section 2) and the CHECK constraints: lots
-- are spent oldest first, a lot's usedPoints is the sum of its lot_usages rows, and
-- allPointsAfterCreation is the customer's running balance right after the entry. Every lot
-- was created in the past and is valid for 36 months, so none has expired.
--
-- Speed: the rows are written in primary-key order, and the foreign-key triggers are skipped
-- (session_replication_role = replica; the data is consistent by construction). The checks at
-- the end prove that, in the same transaction, before anything is committed.
\set ON_ERROR_STOP on

BEGIN;
SET LOCAL session_replication_role = replica;

CREATE FUNCTION pg_temp.entry_hash(entry_id text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT md5(entry_id) || md5(reverse(entry_id)) $$;

-- Customers <prefix>000001 .. (6 digits) each with `lot_count` open lots of `points`, one a
-- day, no redemption: the balance after lot k is k × points.
CREATE FUNCTION pg_temp.seed_open_customers(
    p_tenant text, p_prefix text, p_customers int, p_lot_count int, p_points bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := now() - interval '60 days';
BEGIN
    INSERT INTO accounts (tenant, customer_id, created_at)
    SELECT p_tenant, p_prefix || lpad(i::text, 6, '0'), t0
    FROM generate_series(1, p_customers) AS i;

    INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    SELECT p_tenant, c.id || '-l' || g.k, c.id, NULL, 'points added', p_points, 0,
           c.t0 + g.k * interval '1 day',
           c.t0 + g.k * interval '1 day' + interval '36 months',
           p_points * g.k,
           pg_temp.entry_hash(c.id || '-l' || g.k)
    FROM (SELECT n / p_lot_count + 1 AS i, n % p_lot_count + 1 AS k
          FROM generate_series(0, p_customers * p_lot_count - 1) AS n) AS g,
         LATERAL (SELECT p_prefix || lpad(g.i::text, 6, '0') AS id,
                         t0 + g.i * interval '1 millisecond' AS t0) AS c;
END $$;

-- One customer with a long history: `lot_count` lots of 10 points, one a minute; after every
-- `per_redemption` lots (until `used` lots are used up) a redemption spends exactly those lots,
-- which are then the oldest open ones. The lots after the last redemption stay open.
CREATE FUNCTION pg_temp.seed_history(
    p_tenant text, p_customer text, p_lot_count int, p_per_redemption int, p_used int
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := now() - (p_lot_count + 1) * interval '1 minute';
BEGIN
    IF p_used % p_per_redemption <> 0 OR p_used > p_lot_count THEN
        RAISE EXCEPTION 'used lots (%) must be a multiple of %, at most %',
            p_used, p_per_redemption, p_lot_count;
    END IF;
    INSERT INTO accounts (tenant, customer_id, created_at) VALUES (p_tenant, p_customer, t0);

    INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    SELECT p_tenant, p_customer || '-l' || lpad(j::text, 6, '0'), p_customer,
           'order-' || j, 'points added', 10,
           CASE WHEN j <= p_used THEN 10 ELSE 0 END,
           t0 + j * interval '1 minute',
           t0 + j * interval '1 minute' + interval '36 months',
           CASE WHEN j <= p_used THEN 10 * ((j - 1) % p_per_redemption + 1)
                ELSE 10 * (j - p_used) END,
           pg_temp.entry_hash(p_customer || '-l' || j)
    FROM generate_series(1, p_lot_count) AS j;

    -- Redemption r comes 30 seconds after lot r × per_redemption and spends the whole balance.
    INSERT INTO redemptions (tenant, id, customer_id, description, points, created_at,
                             all_points_after_creation, request_hash)
    SELECT p_tenant, p_customer || '-r' || lpad(r::text, 6, '0'), p_customer,
           'points redeemed', 10 * p_per_redemption,
           t0 + (r * p_per_redemption) * interval '1 minute' + interval '30 seconds',
           0,
           pg_temp.entry_hash(p_customer || '-r' || r)
    FROM generate_series(1, p_used / p_per_redemption) AS r;

    INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points, created_at)
    SELECT p_tenant, p_customer, p_customer || '-l' || lpad(j::text, 6, '0'),
           p_customer || '-r' || lpad(((j - 1) / p_per_redemption + 1)::text, 6, '0'), 10,
           t0 + (((j - 1) / p_per_redemption + 1) * p_per_redemption) * interval '1 minute'
              + interval '30 seconds'
    FROM generate_series(1, p_used) AS j;
END $$;

-- A tenant of `customers` customers b0000001 .. with 5 lots of 100 points each, one a day;
-- between the 3rd and the 4th lot a redemption of 150 points spends lot 1 and half of lot 2.
-- Running balance: 100, 200, 300, (redeemed) 150, 250, 350. Among them, one whale per entry of
-- `whales`, with that many lots and a history like "long"'s (below): whale k of n comes after
-- customer customers × k / (n + 1), as its id with a 'w' after it (b0034400w).
CREATE FUNCTION pg_temp.seed_tenant(p_tenant text, p_customers int, p_whales int[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz := now() - interval '30 days';
BEGIN
    FOR k IN 1 .. cardinality(p_whales) LOOP
        PERFORM pg_temp.seed_history(
            p_tenant,
            'b' || lpad((p_customers * k / (cardinality(p_whales) + 1))::text, 7, '0') || 'w',
            p_whales[k], 10, (p_whales[k] * 99 / 100) / 10 * 10);
    END LOOP;

    INSERT INTO accounts (tenant, customer_id, created_at)
    SELECT p_tenant, 'b' || lpad(i::text, 7, '0'), t0
    FROM generate_series(1, p_customers) AS i;

    INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                      created_at, valid_until, all_points_after_creation, request_hash)
    SELECT p_tenant, c.id || '-l' || g.k, c.id, 'order-' || c.id || '-' || g.k,
           'points added', 100,
           (ARRAY[100, 50, 0, 0, 0])[g.k],
           c.t0 + g.k * interval '1 day',
           c.t0 + g.k * interval '1 day' + interval '36 months',
           (ARRAY[100, 200, 300, 250, 350])[g.k],
           pg_temp.entry_hash(c.id || '-l' || g.k)
    FROM (SELECT n / 5 + 1 AS i, n % 5 + 1 AS k
          FROM generate_series(0, p_customers * 5 - 1) AS n) AS g,
         LATERAL (SELECT 'b' || lpad(g.i::text, 7, '0') AS id,
                         t0 + g.i * interval '1 millisecond' AS t0) AS c;

    INSERT INTO redemptions (tenant, id, customer_id, description, points, created_at,
                             all_points_after_creation, request_hash)
    SELECT p_tenant, c.id || '-r1', c.id, 'points redeemed', 150,
           c.t0 + interval '3 days 12 hours', 150, pg_temp.entry_hash(c.id || '-r1')
    FROM (SELECT 'b' || lpad(i::text, 7, '0') AS id, t0 + i * interval '1 millisecond' AS t0
          FROM generate_series(1, p_customers) AS i) AS c;

    INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points, created_at)
    SELECT p_tenant, c.id, c.id || '-l' || g.k, c.id || '-r1', (ARRAY[100, 50])[g.k],
           c.t0 + interval '3 days 12 hours'
    FROM (SELECT n / 2 + 1 AS i, n % 2 + 1 AS k
          FROM generate_series(0, p_customers * 2 - 1) AS n) AS g,
         LATERAL (SELECT 'b' || lpad(g.i::text, 7, '0') AS id,
                         t0 + g.i * interval '1 millisecond' AS t0) AS c;
END $$;

-- The main tenant.
SELECT pg_temp.seed_open_customers(:'tenant', 'c', :customers, 5, 1000);
-- "hot": every request of one scenario redeems from it; 10 lots of 1,000,000 points.
INSERT INTO accounts (tenant, customer_id, created_at)
VALUES (:'tenant', 'hot', now() - interval '60 days');
INSERT INTO lots (tenant, id, customer_id, reference_id, description, points, used_points,
                  created_at, valid_until, all_points_after_creation, request_hash)
SELECT :'tenant', 'hot-l' || lpad(k::text, 2, '0'), 'hot', NULL, 'points added', 1000000, 0,
       now() - interval '60 days' + k * interval '1 day',
       now() - interval '60 days' + k * interval '1 day' + interval '36 months',
       1000000 * k, pg_temp.entry_hash('hot-l' || k)
FROM generate_series(1, 10) AS k;
-- "long": long_lots lots, 99 % used up by redemptions of 10 lots each; "short": 10 lots, the
-- first 5 used up by one redemption.
SELECT pg_temp.seed_history(:'tenant', 'long', :long_lots, 10, (:long_lots * 99 / 100) / 10 * 10);
SELECT pg_temp.seed_history(:'tenant', 'short', 10, 5, 5);
-- Their journals, as the writes would have recorded them (migration 0012 fills them the same
-- way): the history part reads the first page of each.
INSERT INTO journal (tenant, customer_id, created_at, kind, entry_id, points, balance_after)
SELECT e.tenant, e.customer_id, e.created_at, e.kind, e.id, e.points, e.balance_after
  FROM (SELECT tenant, customer_id, created_at, 'added' AS kind, id, points,
               all_points_after_creation AS balance_after, 0 AS written
          FROM lots WHERE tenant = :'tenant' AND customer_id IN ('long', 'short')
        UNION ALL
        SELECT tenant, customer_id, created_at, 'redeemed', id, points,
               all_points_after_creation, 1
          FROM redemptions WHERE tenant = :'tenant' AND customer_id IN ('long', 'short')) AS e
 ORDER BY e.tenant, e.customer_id, e.created_at, e.written, e.id;

-- The streamed tenants.
SELECT pg_temp.seed_tenant(:'big_tenant', :big_customers, :'big_whales'::int[]);
SELECT pg_temp.seed_tenant(:'mid_tenant', :mid_customers, :'mid_whales'::int[]);

-- The active points each account's last write would have stored (migration 0006).
UPDATE accounts a
   SET active_points = s.active, active_since = now(),
       active_until = COALESCE(s.first_expiry, 'infinity')
  FROM (SELECT tenant, customer_id, sum(points - used_points) AS active,
               min(valid_until) AS first_expiry
          FROM lots WHERE NOT used_up AND valid_until > now()
         GROUP BY tenant, customer_id) s
 WHERE s.tenant = a.tenant AND s.customer_id = a.customer_id;
UPDATE accounts SET active_points = 0, active_since = now(), active_until = 'infinity'
 WHERE active_points IS NULL;

-- The items of the used-up lots, which the redemptions that spent them would have stored
-- (migration 0008).
UPDATE lots
   SET summary_item = rewardpoints_lot_item(tenant, customer_id, id, reference_id, description,
                                            points, used_points, created_at, valid_until,
                                            all_points_after_creation)
 WHERE used_up;

-- What the skipped foreign-key triggers would have checked, and the ledger's own invariants.
DO $$
DECLARE
    bad bigint;
BEGIN
    SELECT count(*) INTO bad FROM lots l
    WHERE NOT EXISTS (SELECT 1 FROM accounts a
                      WHERE a.tenant = l.tenant AND a.customer_id = l.customer_id);
    IF bad > 0 THEN RAISE EXCEPTION '% lots without an account', bad; END IF;

    SELECT count(*) INTO bad FROM redemptions r
    WHERE NOT EXISTS (SELECT 1 FROM accounts a
                      WHERE a.tenant = r.tenant AND a.customer_id = r.customer_id);
    IF bad > 0 THEN RAISE EXCEPTION '% redemptions without an account', bad; END IF;

    SELECT count(*) INTO bad FROM lot_usages u
    WHERE NOT EXISTS (SELECT 1 FROM lots l WHERE l.tenant = u.tenant
                      AND l.customer_id = u.customer_id AND l.id = u.lot_id)
       OR NOT EXISTS (SELECT 1 FROM redemptions r WHERE r.tenant = u.tenant
                      AND r.customer_id = u.customer_id AND r.id = u.redemption_id);
    IF bad > 0 THEN RAISE EXCEPTION '% lot_usages without a lot or redemption', bad; END IF;

    -- usedPoints is what the lot's usages drew; a redemption drew exactly its points.
    SELECT count(*) INTO bad FROM lots l
    LEFT JOIN (SELECT tenant, customer_id, lot_id, sum(points) AS drawn FROM lot_usages
               GROUP BY tenant, customer_id, lot_id) u
           ON u.tenant = l.tenant AND u.customer_id = l.customer_id AND u.lot_id = l.id
    WHERE l.used_points <> coalesce(u.drawn, 0);
    IF bad > 0 THEN RAISE EXCEPTION '% lots whose usedPoints differ from their usages', bad; END IF;

    SELECT count(*) INTO bad FROM redemptions r
    JOIN (SELECT tenant, customer_id, redemption_id, sum(points) AS drawn FROM lot_usages
          GROUP BY tenant, customer_id, redemption_id) u
      ON u.tenant = r.tenant AND u.customer_id = r.customer_id AND u.redemption_id = r.id
    WHERE r.points <> u.drawn;
    IF bad > 0 THEN RAISE EXCEPTION '% redemptions that drew other than their points', bad; END IF;

    -- The newest entry's allPointsAfterCreation is the customer's balance now.
    SELECT count(*) INTO bad FROM (
        SELECT e.tenant, e.customer_id,
               (array_agg(e.after ORDER BY e.created_at DESC, e.kind DESC))[1] AS last_after
        FROM (SELECT tenant, customer_id, created_at, all_points_after_creation AS after,
                     1 AS kind FROM lots
              UNION ALL
              SELECT tenant, customer_id, created_at, all_points_after_creation, 2
              FROM redemptions) e
        GROUP BY e.tenant, e.customer_id) last
    JOIN (SELECT tenant, customer_id, sum(points - used_points) AS balance FROM lots
          GROUP BY tenant, customer_id) b USING (tenant, customer_id)
    WHERE last.last_after <> b.balance;
    IF bad > 0 THEN RAISE EXCEPTION '% customers whose last running balance is wrong', bad; END IF;

    -- The stored active points are the balance.
    SELECT count(*) INTO bad FROM accounts a
    LEFT JOIN (SELECT tenant, customer_id, sum(points - used_points) AS balance FROM lots
               GROUP BY tenant, customer_id) b USING (tenant, customer_id)
    WHERE a.active_points <> coalesce(b.balance, 0);
    IF bad > 0 THEN RAISE EXCEPTION '% accounts whose stored active points are wrong', bad; END IF;
END $$;

COMMIT;
