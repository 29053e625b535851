"""A write's cost does not grow with the customer's history: every write and preview reads the
balance its customer's last write stored (rewardpoints_available), the lots that expired since
and the lots it draws from, never the whole history; and what it answers and stores stays
exact at the edges: expiry at the instant, lots expiring between writes, a reversal giving
points back to a lot that expires before the stored window ends, debts, imported customers.

What a call reads is counted by PostgreSQL itself (the lots' rows read, in the call's
transaction): deterministic, unlike a timing. The customer "long" has 3,000 lots (expired ones
with points left, used-up ones, and open ones expiring a minute apart, oldest first), written as
an import writes them."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from rewardpoints.db import create_engine
from rewardpoints.transfer import import_tenant

from .conftest import make_settings
from .support import connect

OPEN_LOTS = 2000  # 10 points each; lot j expires j minutes (and 30 s) after START
EXPIRED_LOTS = 500  # expired a year before START with their 10 points left
USED_LOTS = 500  # spent by 50 redemptions of 10 lots each
START = datetime(2031, 5, 4, 12, 0, tzinfo=UTC)
# The most lots (rows and index entries together) one write or preview may read here: a page
# of the lots to draw from, the lots it draws from or writes, and their keys' checks.
FEW = 24

# The lots' rows read: by sequential scans, and fetched through their indexes (an index entry
# of a row gone since, which PostgreSQL steps over until VACUUM takes it away, is not a row).
_LOTS_READ = """
SELECT pg_stat_get_xact_tuples_returned('lots'::regclass)
       + pg_stat_get_xact_tuples_fetched('lots'::regclass)
       + (SELECT COALESCE(SUM(pg_stat_get_xact_tuples_fetched(i.indexrelid)), 0)
            FROM pg_index i WHERE i.indrelid = 'lots'::regclass)
"""
_HISTORY = """
WITH lots_written AS (
    INSERT INTO lots (tenant, customer_id, id, description, points, used_points, created_at,
                      valid_until, all_points_after_creation, request_hash)
    SELECT $1, $2, 'x' || lpad(g::text, 5, '0'), 'expired', 10, 0,
           $3::timestamptz - interval '4 years' + g * interval '1 minute',
           $3::timestamptz - interval '1 year' + g * interval '1 minute', 10 * g, 'h'
      FROM generate_series(1, $4) g
    UNION ALL
    SELECT $1, $2, 'u' || lpad(g::text, 5, '0'), 'spent', 10, 10,
           $3::timestamptz - interval '2 years' + g * interval '1 minute',
           $3::timestamptz + interval '2 years', 0, 'h'
      FROM generate_series(1, $5) g
    UNION ALL
    SELECT $1, $2, 'o' || lpad(g::text, 5, '0'), 'open', 10, 0,
           $3::timestamptz - interval '1 year' + g * interval '1 minute',
           $3::timestamptz + g * interval '1 minute' + interval '30 seconds', 10 * g, 'h'
      FROM generate_series(1, $6) g
    RETURNING 1
), redemptions_written AS (
    INSERT INTO redemptions (tenant, customer_id, id, description, points, created_at,
                             all_points_after_creation, request_hash)
    SELECT $1, $2, 'r' || lpad(k::text, 5, '0'), 'spent', 100,
           $3::timestamptz - interval '2 years' + (10 * k) * interval '1 minute'
               + interval '30 seconds', 0, 'h'
      FROM generate_series(1, $5 / 10) k
    RETURNING 1
)
SELECT (SELECT count(*) FROM lots_written), (SELECT count(*) FROM redemptions_written)
"""
_USAGES = """
INSERT INTO lot_usages (tenant, customer_id, lot_id, redemption_id, points, created_at)
SELECT $1, $2, 'u' || lpad(g::text, 5, '0'), 'r' || lpad(((g + 9) / 10)::text, 5, '0'), 10,
       $3::timestamptz - interval '2 years' + (10 * ((g + 9) / 10)) * interval '1 minute'
           + interval '30 seconds'
  FROM generate_series(1, $4) g
"""


def open_lot_expiry(j: int) -> datetime:
    return START + timedelta(minutes=j, seconds=30)


@dataclass
class LedgerCalls:
    """The ledger's functions on one connection, at a clock the test sets, each call in a
    transaction of its own; ``read`` is how many lots the last call read."""

    conn: asyncpg.Connection
    tenant: str
    read: int = 0

    async def at(self, moment: datetime) -> None:
        await self.conn.execute("SELECT set_config('rewardpoints.now', $1, false)", str(moment))

    async def call(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        # The counts are the backend's since it last reported them, which may be transactions
        # ago: what the call read is the difference.
        async with self.conn.transaction():
            before = int(await self.conn.fetchval(_LOTS_READ))
            rows = await self.conn.fetch(sql, *args)
            self.read = int(await self.conn.fetchval(_LOTS_READ)) - before
        return list(rows)

    async def add(self, customer: str, points: int, valid_until: datetime | None = None) -> str:
        rows = await self.call(
            "SELECT outcome FROM rewardpoints_add($1, $2, gen_random_uuid()::text, false, NULL,"
            " 'd', $3, $4, 36, 'h', NULL, NULL)",
            self.tenant,
            customer,
            points,
            valid_until,
        )
        return str(rows[0][0])

    async def redeem(self, customer: str, points: int, entry_id: str = "") -> tuple[str, int]:
        rows = await self.call(
            "SELECT outcome, available FROM rewardpoints_redeem($1, $2,"
            " COALESCE(NULLIF($3, ''), gen_random_uuid()::text), $3 <> '', 'd', $4, 'h',"
            " NULL, NULL)",
            self.tenant,
            customer,
            entry_id,
            points,
        )
        return str(rows[0][0]), int(rows[0][1])

    async def balance(self, customer: str) -> int:
        """The balance read of GET /customer/{id}, at the clock set."""
        value = await self.conn.fetchval(
            "SELECT available FROM rewardpoints_available($1, $2, rewardpoints_read_now())",
            self.tenant,
            customer,
        )
        return int(value)

    async def lots_summed(self, customer: str, moment: datetime) -> int:
        """The balance summed from the lots themselves, as the contract defines it."""
        value = await self.conn.fetchval(
            "SELECT COALESCE(SUM(l.points - l.used_points), 0) - a.debt FROM accounts a"
            " LEFT JOIN lots l ON l.tenant = a.tenant AND l.customer_id = a.customer_id"
            " AND l.valid_until > $3 WHERE a.tenant = $1 AND a.customer_id = $2"
            " GROUP BY a.debt",
            self.tenant,
            customer,
            moment,
        )
        return int(value)


@pytest.fixture
async def ledger(database_url: str, tenant: str) -> AsyncIterator[LedgerCalls]:
    """Customer "long" with the history above, written in bulk as an import writes it (its
    balance not stored yet), and its first write applied; the clock at START."""
    conn = await connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO accounts (tenant, customer_id, created_at, active_since)"
                " VALUES ($1, 'long', $2::timestamptz - interval '5 years', $2)",
                tenant,
                START - timedelta(days=1),
            )
            await conn.fetch(_HISTORY, tenant, "long", START, EXPIRED_LOTS, USED_LOTS, OPEN_LOTS)
            await conn.execute(_USAGES, tenant, "long", START, USED_LOTS)
        await conn.execute("ANALYZE lots, lot_usages, redemptions")
        ledger = LedgerCalls(conn, tenant)
        await ledger.at(START)
        assert await ledger.add("long", 1, START + timedelta(days=3650)) == "added"
        yield ledger
    finally:
        await conn.close()


OPEN_POINTS = 10 * OPEN_LOTS


@pytest.mark.parametrize("plans", ["force_custom_plan", "force_generic_plan"])
async def test_every_write_and_preview_reads_a_few_lots_however_long_the_history(
    ledger: LedgerCalls, tenant: str, plans: str
) -> None:
    """Each call, with the plans PostgreSQL makes for one call and those it keeps for all."""
    await ledger.conn.execute(f"SET plan_cache_mode = {plans}")
    balance = OPEN_POINTS + 1
    calls: list[tuple[str, str, tuple[Any, ...]]] = [
        (
            "addPoints",
            "SELECT outcome FROM rewardpoints_add($1, 'long', 'a1', true, NULL, 'd', 5, NULL,"
            " 36, 'h', NULL, NULL)",
            ("added",),
        ),
        (
            "redeemPoints across two lots",
            "SELECT outcome, available FROM rewardpoints_redeem($1, 'long', 'r1', true, 'd',"
            " 15, 'h', NULL, NULL)",
            ("redeemed", balance + 5 - 15),
        ),
        (
            "deductPoints",
            "SELECT outcome, points_after FROM rewardpoints_deduct($1, 'long', 'd1', true,"
            " NULL, 'd', 3, NULL, false, NULL, NULL, 'h', false)",
            ("deducted", balance + 5 - 15 - 3),
        ),
        (
            "deductPoints, dry run",
            "SELECT outcome, points_after FROM rewardpoints_deduct($1, 'long', 'd2', true,"
            " NULL, 'd', 3, NULL, false, NULL, NULL, 'h', true)",
            ("deducted", balance + 5 - 15 - 6),
        ),
        (
            "reversePoints",
            "SELECT outcome, points_after FROM rewardpoints_reverse($1, 'long', 'v1', true,"
            " 'r1', 10, NULL, NULL, 'h', false) LIMIT 1",
            ("reversed", balance + 5 - 15 - 3 + 10),
        ),
        (
            "reversePoints, dry run",
            "SELECT outcome, points_after FROM rewardpoints_reverse($1, 'long', 'v2', true,"
            " 'r1', 5, NULL, NULL, 'h', true) LIMIT 1",
            ("reversed", balance + 5 - 15 - 3 + 15),
        ),
        (
            "addPoints, dry run",
            "SELECT outcome, points_after FROM rewardpoints_preview_add($1, 'long', 'a2', true,"
            " 4, NULL, 36, 'h')",
            ("added", balance - 3 + 4),
        ),
        (
            "redeemPoints, dry run",
            "SELECT outcome, points_after FROM rewardpoints_preview_redeem($1, 'long', 'r2',"
            " true, 4, 'h') LIMIT 1",
            ("redeemed", balance - 3 - 4),
        ),
        (
            "a chargeback",
            "SELECT rewardpoints_charge_back($1, 'long', 'c1', 'd', 7, 36, 'h', NULL)",
            ("added",),
        ),
        (
            "an order's points",
            "SELECT outcome, awarded_points FROM rewardpoints_award_order($1, 'long', 'o1', 6,"
            " 'o1-lot', 'd', 36, 'h', NULL, NULL)",
            ("awarded", 6),
        ),
        (
            "additions coalesced",
            "SELECT outcome FROM rewardpoints_add_many(ARRAY[$1, $1]::varchar[],"
            " ARRAY['long', 'long']::varchar[], ARRAY['m1', 'm2']::varchar[],"
            " ARRAY[true, true], ARRAY[NULL, NULL]::text[], ARRAY['d', 'd'], ARRAY[1, 2]::bigint[],"
            " ARRAY[NULL, NULL]::timestamptz[], ARRAY[36, 36], ARRAY['h', 'h']::varchar[],"
            " ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[]) LIMIT 1",
            ("added",),
        ),
        (
            "redemptions coalesced",
            "SELECT outcome, available FROM rewardpoints_redeem_many(ARRAY[$1, $1]::varchar[],"
            " ARRAY['long', 'long']::varchar[], ARRAY['n1', 'n2']::varchar[], ARRAY[true, true],"
            " ARRAY['d', 'd'], ARRAY[11, 12]::bigint[], ARRAY['h', 'h']::varchar[],"
            " ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[]) OFFSET 1",
            ("redeemed", balance - 3 + 7 + 6 + 3 - 23),
        ),
    ]
    for name, sql, expected in calls:
        rows = await ledger.call(sql, tenant)
        assert tuple(rows[0]) == expected, name
        assert ledger.read <= FEW, f"{name} read {ledger.read} lots"
    assert await ledger.balance("long") == await ledger.lots_summed("long", START)


async def test_the_lots_that_expired_since_the_last_write_are_read_once(
    ledger: LedgerCalls,
) -> None:
    """Ten open lots expire before the next write, the oldest ones, where draws begin: that
    write reads about them, once, and its draw steps past them; the next reads a few again."""
    await ledger.at(open_lot_expiry(10) + timedelta(seconds=1))
    assert await ledger.redeem("long", 15) == ("redeemed", OPEN_POINTS + 1 - 100 - 15)
    assert ledger.read <= FEW + 4 * 10
    assert await ledger.redeem("long", 15) == ("redeemed", OPEN_POINTS + 1 - 100 - 30)
    assert ledger.read <= FEW
    # The draws took lots 11 to 13, the oldest still open, none of the expired ones.
    spent = await ledger.conn.fetch(
        "SELECT lot_id, sum(points) FROM lot_usages WHERE tenant = $1 AND customer_id = 'long'"
        " AND created_at >= $2 GROUP BY lot_id ORDER BY lot_id",
        ledger.tenant,
        START,
    )
    assert [tuple(row) for row in spent] == [("o00011", 10), ("o00012", 10), ("o00013", 10)]
    assert await ledger.balance("long") == await ledger.lots_summed(
        "long", open_lot_expiry(10) + timedelta(seconds=1)
    )


async def test_a_lot_is_gone_at_its_valid_until_to_the_microsecond(ledger: LedgerCalls) -> None:
    first = open_lot_expiry(1)
    await ledger.at(first - timedelta(microseconds=1))
    everything = OPEN_POINTS + 1
    preview = await ledger.call(
        "SELECT outcome, drawn_lot FROM rewardpoints_preview_redeem($1, 'long', NULL, false,"
        " $2, 'h') LIMIT 1",
        ledger.tenant,
        everything,
    )
    assert tuple(preview[0]) == ("redeemed", "o00001")  # a microsecond before: it counts
    await ledger.at(first)
    assert await ledger.redeem("long", everything) == ("insufficient", everything - 10)
    assert ledger.read <= FEW + 4
    assert await ledger.balance("long") == everything - 10
    assert await ledger.redeem("long", 10) == ("redeemed", everything - 20)
    drawn = await ledger.conn.fetchval(
        "SELECT string_agg(lot_id, ',') FROM lot_usages WHERE tenant = $1"
        " AND customer_id = 'long' AND created_at >= $2",
        ledger.tenant,
        START,
    )
    assert drawn == "o00002"


async def test_a_reversal_into_a_lot_expiring_inside_the_stored_window_shortens_it(
    ledger: LedgerCalls,
) -> None:
    """Lots 1 to 3 are spent; once lot 1 has expired, a write stores a window up to lot 4's
    expiry (the spent lots count for nothing). Reversing the redemption gives lots 2 and 3
    their points back: they count again, and expire before that window ends."""
    assert await ledger.redeem("long", 30, "spent") == ("redeemed", OPEN_POINTS + 1 - 30)
    after_first = open_lot_expiry(1) + timedelta(seconds=1)
    await ledger.at(after_first)
    assert await ledger.add("long", 1, START + timedelta(days=3650)) == "added"
    stored_until = await ledger.conn.fetchval(
        "SELECT active_until FROM accounts WHERE tenant = $1 AND customer_id = 'long'",
        ledger.tenant,
    )
    assert stored_until == open_lot_expiry(4)
    reversal = await ledger.call(
        "SELECT restored_total, expired_total, points_after FROM rewardpoints_reverse($1,"
        " 'long', 'back', true, 'spent', NULL, NULL, NULL, 'h', false) LIMIT 1",
        ledger.tenant,
    )
    assert tuple(reversal[0]) == (20, 10, OPEN_POINTS + 2 - 30 + 20)
    assert ledger.read <= FEW
    for lot in (2, 3):
        await ledger.at(open_lot_expiry(lot))
        expected = await ledger.lots_summed("long", open_lot_expiry(lot))
        assert await ledger.balance("long") == expected
        assert await ledger.redeem("long", 1) == ("redeemed", expected - 1)
        assert ledger.read <= FEW + 8
    # Lot 2's 10 points and lot 3's 9 (one was redeemed) expired; two redeemed.
    assert await ledger.balance("long") == OPEN_POINTS + 2 - 30 + 20 - 10 - 9 - 2


async def test_a_debt_is_paid_first_and_counted_with_the_balance_stored(
    ledger: LedgerCalls,
) -> None:
    """Points deducted beyond the balance are owed; the 300 lots added after (one point each,
    valid a minute longer each) pay the debt first, then count; some expire before the next
    writes: each balance and allPointsAfterCreation is the lots' sum less the debt."""
    deducted = await ledger.call(
        "SELECT outcome, points_after FROM rewardpoints_deduct($1, 'long', 'claw', true, NULL,"
        " 'd', $2, NULL, true, NULL, NULL, 'h', false) LIMIT 1",
        ledger.tenant,
        OPEN_POINTS + 1 + 50,
    )
    assert tuple(deducted[0]) == ("deducted", -50)
    added = await ledger.call(
        "SELECT count(*) FILTER (WHERE outcome = 'added') FROM rewardpoints_add_many("
        " array_fill($1::varchar, ARRAY[300]), array_fill('long'::varchar, ARRAY[300]),"
        " ARRAY(SELECT 'k' || lpad(g::text, 3, '0') FROM generate_series(1, 300) g)::varchar[],"
        " array_fill(true, ARRAY[300]), array_fill(NULL::text, ARRAY[300]),"
        " array_fill('d'::text, ARRAY[300]), array_fill(1::bigint, ARRAY[300]),"
        " ARRAY(SELECT $2::timestamptz + g * interval '1 minute' FROM generate_series(1, 300) g),"
        " array_fill(36, ARRAY[300]), array_fill('h'::varchar, ARRAY[300]),"
        " array_fill(NULL::text, ARRAY[300]), array_fill(NULL::text, ARRAY[300]))",
        ledger.tenant,
        START + timedelta(seconds=10),
    )
    assert added[0][0] == 300
    afters = await ledger.conn.fetchval(
        "SELECT array_agg(all_points_after_creation ORDER BY id) FROM lots"
        " WHERE tenant = $1 AND customer_id = 'long' AND id LIKE 'k%'",
        ledger.tenant,
    )
    assert afters == [k - 50 for k in range(1, 301)]
    later = START + timedelta(minutes=100, seconds=20)  # lots k001-k100 have expired
    await ledger.at(later)
    assert await ledger.balance("long") == 200 == await ledger.lots_summed("long", later)
    for total in (205, 210):
        assert await ledger.add("long", 5) == "added"
        assert ledger.read <= FEW + 4 * 50
        assert await ledger.balance("long") == total == await ledger.lots_summed("long", later)
    assert ledger.read <= FEW  # the second: nothing expired since the first
    assert await ledger.redeem("long", 211) == ("insufficient", 210)


async def test_an_imported_customer_is_read_whole_by_its_first_write_only(
    database_url: str, tenant: str
) -> None:
    """An import writes no stored balance: the first write sums the customer's lots (and marks
    those already expired), the next ones read a few, and every balance is the lots' sum."""
    lots = [
        {
            "id": f"l{j:04d}",
            "points": 10,
            "usedPoints": 10 if j <= 100 else 0,
            "usedWith": [f"r{(j + 9) // 10:03d}"] if j <= 100 else [],
            "createdAt": (START - timedelta(days=900) + timedelta(minutes=j)).isoformat(),
            # lots 101-400 expired before START, 401-600 expire after it, a minute apart
            "validUntil": (
                START - timedelta(days=30) + timedelta(minutes=j)
                if j <= 400
                else START + timedelta(minutes=j)
            ).isoformat(),
            "allPointsAfterCreation": 0,
        }
        for j in range(1, 601)
    ]
    redemptions = [
        {
            "id": f"r{k:03d}",
            "points": 100,
            "createdAt": (
                START - timedelta(days=900) + timedelta(minutes=10 * k, seconds=30)
            ).isoformat(),
            "allPointsAfterCreation": 0,
        }
        for k in range(1, 11)
    ]
    document = {
        "customerId": "imported",
        "summary": {"addedPointsList": lots, "redeemedPointsList": redemptions},
    }
    engine = create_engine(make_settings(database_url))
    try:
        done = await import_tenant(engine, tenant, io.BytesIO(json.dumps([document]).encode()))
    finally:
        await engine.dispose()
    assert (done.customers, done.refused) == (1, 0)
    conn = await connect(database_url)
    try:
        ledger = LedgerCalls(conn, tenant)
        await ledger.at(START)
        assert await ledger.balance("imported") == 10 * 200
        assert await ledger.redeem("imported", 15) == ("redeemed", 10 * 200 - 15)
        assert ledger.read >= 200  # the first write: every lot with points left
        marked = await conn.fetchval(
            "SELECT count(*) FROM lots WHERE tenant = $1 AND expired", tenant
        )
        assert marked == 300
        later = START + timedelta(minutes=420, seconds=1)  # lots 401-420 have expired
        await ledger.at(later)
        left = await ledger.lots_summed("imported", later)
        assert left == 10 * 200 - 15 - 5 - 18 * 10
        assert await ledger.redeem("imported", 15) == ("redeemed", left - 15)
        assert ledger.read <= FEW + 4 * 20
        assert await ledger.redeem("imported", 15) == ("redeemed", left - 30)
        assert ledger.read <= FEW
        assert await ledger.balance("imported") == await ledger.lots_summed("imported", later)
    finally:
        await conn.close()
