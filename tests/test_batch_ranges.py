"""summaryBatch on PostgreSQL reads the tenant in ranges of customers, on several connections
that share one snapshot. Whatever the ranges and the connections, the answer is the same bytes:
every customer's summary, in customer order, as of one moment."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from rewardpoints.documents import (
    _EXPORT_SETTINGS,
    BatchExport,
    _range_documents,
    summary_documents,
)

from .conftest import _admin, bearer, documents_of, fresh_database, served, token
from .support import FakeClock, bulk_load, connect

# Ordered bytewise ("0" < "A" < "Z9" < "a" < "b-1" < "z" < "ä"); two have no lot at all.
CUSTOMERS = ["z", "a", "A", "b-1", "0", "Z9", "ä", "n-empty", "m-empty"]


async def _seed(http: httpx.AsyncClient, headers: dict[str, str], clock: FakeClock) -> None:
    """Customers with lots, redemptions that span lots (usedWith lists), and empty customers."""
    for number, customer in enumerate(CUSTOMERS):
        path = f"/reward-points/customer/{customer}"
        if customer.endswith("-empty"):
            created = await http.post(path, json={"customerId": customer}, headers=headers)
            assert created.status_code == 200, created.text
            continue
        for points in (10, 20 + number, 5):
            added = await http.post(f"{path}/addPoints", json={"points": points}, headers=headers)
            assert added.status_code == 201, added.text
            clock.advance(seconds=1)
        for points in (15, number + 1):
            spent = await http.post(
                f"{path}/redeemPoints", json={"points": points}, headers=headers
            )
            assert spent.status_code == 201, spent.text
            clock.advance(seconds=1)


async def _expected(http: httpx.AsyncClient, headers: dict[str, str]) -> bytes:
    """The customers' own summaries, in customer order, as one JSON array."""
    documents = []
    for customer in sorted(CUSTOMERS, key=str.encode):
        answer = await http.get(f"/reward-points/customer/{customer}/summary", headers=headers)
        assert answer.status_code == 200, answer.text
        documents.append(answer.content)
    return b"[" + b",".join(documents) + b"]"


@pytest.mark.parametrize(
    ("connections", "range_customers"),
    [(1, 1_000_000), (1, 2), (2, 1), (2, 4), (3, 2), (16, 1)],
)
async def test_every_split_into_ranges_and_connections_answers_the_same_bytes(
    pg_url: str, tenant: str, connections: int, range_customers: int
) -> None:
    clock = FakeClock()
    headers = bearer(token(tenant))
    async with served(pg_url, clock) as http:
        await _seed(http, headers, clock)
        expected = await _expected(http, headers)
    parsed = json.loads(expected)
    assert [document["customerId"] for document in parsed] == sorted(CUSTOMERS, key=str.encode)
    assert any(lot["usedWith"] for lot in parsed[0]["summary"]["addedPointsList"])
    async with served(
        pg_url,
        clock,
        summary_batch_connections=connections,
        summary_batch_range_customers=range_customers,
    ) as http:
        batch = await http.get("/reward-points/summaryBatch", headers=headers)
    assert batch.status_code == 200, batch.text
    assert batch.content == expected


async def test_exports_at_the_same_time_are_each_whole(pg_url: str, tenant: str) -> None:
    """Three at once on one process: one reads on two connections, the others on one each."""
    clock = FakeClock()
    headers = bearer(token(tenant))
    async with served(
        pg_url, clock, summary_batch_connections=2, summary_batch_range_customers=1
    ) as http:
        await _seed(http, headers, clock)
        expected = await _expected(http, headers)
        answers = await asyncio.gather(
            *(http.get("/reward-points/summaryBatch", headers=headers) for _ in range(3))
        )
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert [answer.content for answer in answers] == [expected] * 3


# One point more for "a" and then for "z" (on their one lot), each committed on its own, over
# and over, as fast as PostgreSQL runs them: no moment of the export goes without a write.
_ADD_ALTERNATELY = """
DO $$
DECLARE
    customer text;
BEGIN
    FOR round IN 1..100000000 LOOP
        FOREACH customer IN ARRAY ARRAY['a', 'z'] LOOP
            UPDATE lots SET points = points + 1
             WHERE tenant = '{tenant}' AND customer_id = customer;
            COMMIT;
        END LOOP;
    END LOOP;
END
$$
"""


async def test_every_range_is_read_as_of_the_same_moment(pg_url: str, tenant: str) -> None:
    """Points are added to "a" and then to "z", over and over, while the tenant is exported with
    "a" and "z" in ranges of their own on different connections. Read as of one moment, "a" has
    as many points as "z" or one more; a range read later than the other would see "z" ahead."""
    clock = FakeClock()
    headers = bearer(token(tenant))
    writer_conn = await connect(pg_url)
    # A commit need not wait for the disk here, so the writes come many to a millisecond.
    await writer_conn.execute("SET synchronous_commit = off")
    # Should this test die half-way, PostgreSQL ends the writes itself.
    await writer_conn.execute("SET statement_timeout = '60s'")
    try:
        async with served(
            pg_url, clock, summary_batch_connections=2, summary_batch_range_customers=1
        ) as http:
            for customer in ("a", "z"):
                added = await http.post(
                    f"/reward-points/customer/{customer}/addPoints",
                    json={"points": 1},
                    headers=headers,
                )
                assert added.status_code == 201, added.text
            writer = asyncio.create_task(
                writer_conn.execute(_ADD_ALTERNATELY.format(tenant=tenant))
            )
            seen: list[tuple[int, int]] = []
            try:
                for _ in range(40):
                    batch = await http.get("/reward-points/summaryBatch", headers=headers)
                    assert batch.status_code == 200, batch.text
                    points = {doc["customerId"]: doc["activePoints"] for doc in batch.json()}
                    seen.append((points["a"], points["z"]))
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
    finally:
        await writer_conn.close()
    assert len({a for a, _ in seen}) > len(seen) // 2  # the exports saw the writes go on
    assert all(a - z in (0, 1) for a, z in seen), seen


def test_extra_connections_are_shared_by_the_exports_of_a_process() -> None:
    export = BatchExport(connections=3, range_customers=10)
    with export.claim(5) as first:
        assert first == 2
        with export.claim(1) as second:
            assert second == 0
    with export.claim(1) as third:
        assert third == 1
        with export.claim(4) as fourth:
            assert fourth == 1
    with export.claim(0) as none:
        assert none == 0
    with BatchExport(connections=1).claim(3) as alone:
        assert alone == 0


# ---- a tenant loaded in bulk, before PostgreSQL has any statistics of it -------------------


@pytest.fixture
def unanalysed_url(pg_server_url: str) -> Iterator[str]:
    """A database of its own, migrated, where autovacuum never analyses the ledger's tables."""
    with fresh_database(pg_server_url) as url:
        asyncio.run(
            _admin(
                url,
                *(
                    f"ALTER TABLE {table} SET (autovacuum_enabled = false)"
                    for table in ("accounts", "lots", "redemptions", "lot_usages")
                ),
            )
        )
        yield url


async def test_a_tenant_without_statistics_is_read_by_merging_never_customer_by_customer(
    unanalysed_url: str, tenant: str
) -> None:
    """Just after a bulk load PostgreSQL has no statistics of the rows, and for a range of
    customers it would choose nested loops that rebuild the range's lists once per customer
    (tens of seconds for 2,000 customers). The export's plans merge instead."""
    conn = await connect(unanalysed_url)
    try:
        await bulk_load(conn, tenant, 3000)
        analysed = await conn.fetchval(
            "SELECT count(*) FROM pg_stats WHERE tablename IN ('accounts', 'lots', 'redemptions')"
        )
        assert analysed == 0
        now = datetime.now(UTC)
        async with conn.transaction(isolation="repeatable_read"):
            for statement in _EXPORT_SETTINGS:
                await conn.execute(statement)
            for lower, upper in [(True, True), (True, False), (False, True), (False, False)]:
                bounds = [
                    value for value, wanted in (("c00100", lower), ("c02100", upper)) if wanted
                ]
                query = _range_documents(lower=lower, upper=upper)
                plan = "\n".join(
                    row[0] for row in await conn.fetch(f"EXPLAIN {query}", tenant, now, *bounds)
                )
                assert "Merge Left Join" in plan, plan
                assert "Nested Loop" not in plan, plan
    finally:
        await conn.close()

    clock = FakeClock()
    headers = bearer(token(tenant))
    async with served(unanalysed_url, clock, summary_batch_range_customers=2000) as http:
        batch = await http.get("/reward-points/summaryBatch", headers=headers)
        assert batch.status_code == 200, batch.text
        documents = batch.json()
        assert [document["customerId"] for document in documents] == [
            f"c{number:05d}" for number in range(1, 3001)
        ]
        single = await http.get("/reward-points/customer/c02999/summary", headers=headers)
    assert documents[2998] == single.json()
    assert documents[2998]["summary"]["addedPointsList"][0]["usedWith"] == ["r2999"]
    assert documents[2998]["activePoints"] == 160


# ---- the export's connections, read through the ledger as the route reads it ----------------


async def _bulk_tenant(pg_url: str, tenant: str, customers: int) -> None:
    conn = await connect(pg_url)
    try:
        await bulk_load(conn, tenant, customers)
    finally:
        await conn.close()


async def _copies_running(pg_url: str) -> int:
    """The service's connections to the database that are inside a summaryBatch COPY."""
    conn = await connect(pg_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'rewardpoints' AND query LIKE 'COPY%'"
            " AND state <> 'idle'"
        )
        return count
    finally:
        await conn.close()


def _customers_in(items: list[bytes]) -> list[str]:
    return [document["customerId"] for document in json.loads(b"[" + b",".join(items) + b"]")]


EVERY_CUSTOMER = [f"c{number:05d}" for number in range(1, 3001)]


@pytest.mark.parametrize("connections", [1, 2, 3])
async def test_an_export_reads_on_as_many_connections_as_it_is_given(
    pg_url: str, tenant: str, connections: int
) -> None:
    await _bulk_tenant(pg_url, tenant, 3000)
    async with documents_of(
        pg_url, summary_batch_connections=connections, summary_batch_range_customers=500
    ) as docs:
        documents = summary_documents(docs, tenant)
        try:
            items = [await anext(documents)]
            # Every connection begins its first range (after a round trip of the driver's own)
            # and then waits for the response to take it.
            running = await _copies_running(pg_url)
            for _ in range(100):
                if running == connections:
                    break
                await asyncio.sleep(0.02)
                running = await _copies_running(pg_url)
            assert running == connections
            items += [item async for item in documents]
        finally:
            await documents.aclose()
        assert await _copies_running(pg_url) == 0
    assert _customers_in(items) == EVERY_CUSTOMER


async def test_a_client_that_reads_slowly_gets_the_whole_tenant(pg_url: str, tenant: str) -> None:
    """Between its ranges, and once it has read its ranges ahead, a connection waits idle in
    its transaction for the client; that is no stalled request for the idle timeout to end."""
    await _bulk_tenant(pg_url, tenant, 3000)
    async with documents_of(
        pg_url,
        summary_batch_connections=2,
        summary_batch_range_customers=1000,
        database_idle_in_transaction_timeout_ms=300,
    ) as docs:
        documents = summary_documents(docs, tenant)
        items = [await anext(documents)]
        await asyncio.sleep(1.5)
        items += [item async for item in documents]
    assert _customers_in(items) == EVERY_CUSTOMER


async def test_an_export_takes_no_extra_connection_another_request_would_wait_for(
    pg_url: str, tenant: str
) -> None:
    """With a pool of one connection (and one of overflow), an export that took the overflow
    too would leave a second export waiting for it until the pool's timeout, then a 503."""
    await _bulk_tenant(pg_url, tenant, 3000)
    async with documents_of(
        pg_url,
        summary_batch_connections=2,
        summary_batch_range_customers=1000,
        database_pool_size=1,
        database_pool_timeout_seconds=1,
    ) as docs:
        first = summary_documents(docs, tenant)
        first_items = [await anext(first)]
        second_items = [item async for item in summary_documents(docs, tenant)]
        first_items += [item async for item in first]
    assert _customers_in(first_items) == EVERY_CUSTOMER
    assert _customers_in(second_items) == EVERY_CUSTOMER
