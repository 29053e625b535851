"""Summary segments (documents.py, migration 0014): a long summary's settled stretches, made
once and read instead of their entries. The summary stays the same bytes as one built whole from
the lots and redemptions, and as the tests' oracle, right after every write: a reversal, a
deduction, lots expiring, a customer deleted; segments are made only of entries that no
longer change, and go when a reversal changes one of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx

from rewardpoints.db import create_engine
from rewardpoints.documents import dumps, make_segments

from .conftest import make_settings, served
from .support import FakeClock, connect, summary_from_tables

Headers = dict[str, str]
BASE = "/reward-points/customer"
# Segments of three entries; every summary streamed, so read through its segments.
SEGMENTED = {"summary_stream_entries": 0, "summary_segment_entries": 3}


class Reader:
    """Writes through one service; reads the customer's summary through a service that reads
    segments (``segmented``) and one that builds it whole from the entries (``whole``)."""

    def __init__(
        self,
        pg_url: str,
        tenant: str,
        headers: Headers,
        clock: FakeClock,
        segmented: httpx.AsyncClient,
        whole: httpx.AsyncClient,
    ) -> None:
        self.pg_url = pg_url
        self.tenant = tenant
        self.headers = headers
        self.clock = clock
        self.segmented = segmented
        self.whole = whole

    async def write(self, customer: str, action: str, **body: Any) -> Any:
        answer = await self.whole.post(
            f"{BASE}/{customer}/{action}", json=body, headers=self.headers
        )
        assert answer.status_code == 201, answer.text
        return answer.json() if answer.content else None

    async def summary(self, customer: str) -> Any:
        """The segmented summary, after checking it is the same bytes as the whole one and as
        the oracle's."""
        path = f"{BASE}/{customer}/summary"
        segmented = await self.segmented.get(path, headers=self.headers)
        whole = await self.whole.get(path, headers=self.headers)
        assert segmented.status_code == 200, segmented.text
        assert whole.status_code == 200, whole.text
        assert "content-length" not in segmented.headers  # streamed
        engine = create_engine(make_settings(self.pg_url))
        try:
            async with engine.connect() as conn:
                oracle = await summary_from_tables(conn, self.tenant, customer, self.clock.now)
        finally:
            await engine.dispose()
        assert segmented.content == whole.content == dumps(oracle)
        return oracle

    async def segments(self, customer: str) -> list[tuple[str, str, str, int]]:
        """The customer's segments: list, first and last entry, number of entries."""
        conn = await connect(self.pg_url)
        try:
            rows = await conn.fetch(
                "SELECT list, first_id, last_id, entries FROM summary_segments"
                " WHERE tenant = $1 AND customer_id = $2 ORDER BY list, first_at, first_id",
                self.tenant,
                customer,
            )
        finally:
            await conn.close()
        return [(row[0], row[1], row[2], row[3]) for row in rows]


@asynccontextmanager
async def reader(pg_url: str, tenant: str, headers: Headers) -> AsyncIterator[Reader]:
    clock = FakeClock()
    async with (
        served(pg_url, clock, **SEGMENTED) as segmented,
        served(pg_url, clock) as whole,
    ):
        yield Reader(pg_url, tenant, headers, clock, segmented, whole)


async def spent_stretches(r: Reader, customer: str) -> None:
    """Lots l01-l03, x (valid for a minute only), l04-l09, of 10 points each; x expires with
    its points, then r1 spends l01-l03 and half of l04, r2 the rest of l04 and l05-l07: used up
    are l01-l03 and l04-l07, with x (expired, not used up) between them; l08 and l09 are
    open."""
    for lot in ("l01", "l02", "l03"):
        await r.write(customer, "addPoints", id=lot, points=10)
    soon = (r.clock.now + timedelta(minutes=1)).isoformat()
    await r.write(customer, "addPoints", id="x", points=10, validUntil=soon)
    for lot in ("l04", "l05", "l06", "l07", "l08", "l09"):
        await r.write(customer, "addPoints", id=lot, points=10)
    r.clock.advance(minutes=2)
    await r.write(customer, "redeemPoints", id="r1", points=35)
    await r.write(customer, "redeemPoints", id="r2", points=35)


async def test_settled_stretches_are_read_as_segments_between_the_entries_that_are_not(
    pg_url: str, tenant: str, headers: Headers
) -> None:
    async with reader(pg_url, tenant, headers) as r:
        await spent_stretches(r, "c")
        document = await r.summary("c")
        assert [lot["id"] for lot in document["summary"]["addedPointsList"]] == [
            "l01", "l02", "l03", "x", "l04", "l05", "l06", "l07", "l08", "l09"
        ]  # fmt: skip
        # x and the open lots are no segment's; l07 waits for two more used-up lots after it.
        assert await r.segments("c") == [("lots", "l01", "l03", 3), ("lots", "l04", "l06", 3)]
        # Read again, through the segments this time, and after a write that adds to neither.
        await r.summary("c")
        await r.write("c", "redeemPoints", id="r3", points=4)
        await r.write("c", "redeemPoints", id="r4", points=1)
        await r.summary("c")
        assert await r.segments("c") == [
            ("lots", "l01", "l03", 3),
            ("lots", "l04", "l06", 3),
            ("redemptions", "r1", "r3", 3),
        ]


async def test_a_reversal_takes_out_the_segments_of_its_redemption_and_of_its_lots(
    pg_url: str, tenant: str, headers: Headers
) -> None:
    async with reader(pg_url, tenant, headers) as r:
        await spent_stretches(r, "c")
        await r.write("c", "redeemPoints", id="r3", points=1)
        await r.summary("c")
        segments = await r.segments("c")
        assert ("lots", "l04", "l06", 3) in segments
        assert ("redemptions", "r1", "r3", 3) in segments
        # r1 drew 5 from l04, its newest lot: they go back, l04 has points again, r1 holds 30.
        await r.write("c", "reversePoints", redemptionId="r1", points=5, id="v1")
        assert await r.segments("c") == [("lots", "l01", "l03", 3)]
        document = await r.summary("c")
        lots = {lot["id"]: lot for lot in document["summary"]["addedPointsList"]}
        assert (lots["l04"]["usedPoints"], lots["l04"]["usedWith"]) == (5, ["r2"])
        assert document["summary"]["redeemedPointsList"][0] == {
            **document["summary"]["redeemedPointsList"][0],
            "id": "r1",
            "points": 30,
        }
        # l01-l03 stay as they were; l05-l07 follow one another used up now, after l04; r1's
        # segment is made again, with r1's item as it is now.
        assert await r.segments("c") == [
            ("lots", "l01", "l03", 3),
            ("lots", "l05", "l07", 3),
            ("redemptions", "r1", "r3", 3),
        ]
        # The rest of r1 goes back to l03, l02, l01: their segment goes too, as does r1's.
        await r.write("c", "reversePoints", redemptionId="r1", id="v2")
        assert await r.segments("c") == [("lots", "l05", "l07", 3)]
        document = await r.summary("c")
        assert [lot["usedPoints"] for lot in document["summary"]["addedPointsList"][:5]] == [
            0,
            0,
            0,
            0,
            5,
        ]
        assert await r.segments("c") == [("lots", "l05", "l07", 3), ("redemptions", "r1", "r3", 3)]
        assert document["summary"]["redeemedPointsList"][0]["points"] == 0


async def test_a_reversal_to_an_expired_lot_of_a_segment_and_a_deduction_keep_it_exact(
    pg_url: str, tenant: str, headers: Headers
) -> None:
    async with reader(pg_url, tenant, headers) as r:
        await spent_stretches(r, "c")
        await r.summary("c")
        assert ("lots", "l01", "l03", 3) in await r.segments("c")
        # A deduction from a lot named first, l09, then the oldest open one, l08: both used up.
        deducted = await r.write("c", "deductPoints", id="d1", points=20, lotId="l09")
        assert deducted["balanceAfter"] == 0
        await r.summary("c")
        assert await r.segments("c") == [
            ("lots", "l01", "l03", 3),
            ("lots", "l04", "l06", 3),
            ("lots", "l07", "l09", 3),
            ("redemptions", "r1", "d1", 3),
        ]
        # Three years on, every lot has expired; r1's points come back to l04 and l01-l03
        # expired (recorded on the lots, not restored to the balance).
        r.clock.advance(days=3 * 366 + 10)
        reversed_ = await r.write("c", "reversePoints", redemptionId="r1", id="v1")
        assert reversed_ == {"id": "v1", "restoredPoints": 0, "expiredPoints": 35}
        assert await r.segments("c") == [("lots", "l07", "l09", 3)]
        document = await r.summary("c")
        assert document["activePoints"] == 0
        # l01-l04 have points again (expired): no segment holds them; r1's is made again.
        assert await r.segments("c") == [
            ("lots", "l07", "l09", 3),
            ("redemptions", "r1", "d1", 3),
        ]
        redeemed = document["summary"]["redeemedPointsList"]
        assert [(entry["id"], entry["points"]) for entry in redeemed] == [
            ("r1", 0),
            ("r2", 35),
            ("d1", 20),
        ]


async def test_a_summary_waits_for_no_write_and_makes_no_segment_while_one_holds_the_customer(
    pg_url: str, tenant: str, headers: Headers
) -> None:
    async with reader(pg_url, tenant, headers) as r:
        await spent_stretches(r, "c")
        conn = await connect(pg_url)
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM accounts WHERE tenant = $1 AND customer_id = 'c' FOR UPDATE",
                    tenant,
                )
                engine = create_engine(make_settings(pg_url))
                try:
                    assert await make_segments(engine, tenant, "c", 3) == 0
                finally:
                    await engine.dispose()
                assert await r.segments("c") == []
        finally:
            await conn.close()
        await r.summary("c")
        assert len(await r.segments("c")) == 2


async def test_a_deleted_customer_takes_its_segments_along(
    pg_url: str, tenant: str, headers: Headers
) -> None:
    async with reader(pg_url, tenant, headers) as r:
        await spent_stretches(r, "c")
        await r.summary("c")
        assert await r.segments("c")
        deleted = await r.whole.delete(f"{BASE}/c", headers=headers)
        assert deleted.status_code == 200, deleted.text
        assert await r.segments("c") == []
        missing = await r.segmented.get(f"{BASE}/c/summary", headers=headers)
        assert missing.status_code == 404
        # The same id again is a customer of its own, read from its own entries.
        await r.write("c", "addPoints", id="l01", points=7)
        document = await r.summary("c")
        assert [lot["points"] for lot in document["summary"]["addedPointsList"]] == [7]


async def test_no_segments_are_made_when_the_setting_is_zero(
    pg_url: str, tenant: str, headers: Headers
) -> None:
    clock = FakeClock()
    async with served(pg_url, clock, summary_stream_entries=0, summary_segment_entries=0) as http:
        for lot in ("a", "b", "c", "d"):
            added = await http.post(
                f"{BASE}/c/addPoints", json={"id": lot, "points": 5}, headers=headers
            )
            assert added.status_code == 201, added.text
        spent = await http.post(f"{BASE}/c/redeemPoints", json={"points": 20}, headers=headers)
        assert spent.status_code == 201, spent.text
        answer = await http.get(f"{BASE}/c/summary", headers=headers)
        assert answer.status_code == 200
    conn = await connect(pg_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM summary_segments WHERE tenant = $1", tenant
        )
    finally:
        await conn.close()
    assert count == 0
    assert [lot["usedPoints"] for lot in answer.json()["summary"]["addedPointsList"]] == [5] * 4
