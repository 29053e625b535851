"""Summaries are the same bytes whichever database writes them (PostgreSQL builds them in SQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert, text

from rewardpoints.app import create_app
from rewardpoints.db import create_engine
from rewardpoints.documents import _ONE_DOCUMENT, dumps
from rewardpoints.models import accounts, lot_usages, lots, redemptions

from .conftest import bearer, make_settings, served, token
from .support import FakeClock, summary_from_tables

AWKWARD = 'quote " backslash \\ slash / newline \n tab \t nul-less \x01 ä € 😀 \u2028 end'


async def test_summary_bytes_are_compact_json_with_every_character_escaped_alike(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    customer = "cust\u00e4\"'"
    url = "/reward-points/customer/cust%C3%A4%22'"
    await client.post(
        f"{url}/addPoints",
        json={"points": 9, "description": AWKWARD, "reference-id": AWKWARD, "id": 'i\\d"1'},
        headers=headers,
    )
    await client.post(
        f"{url}/redeemPoints", json={"points": 4, "description": AWKWARD}, headers=headers
    )
    single = await client.get(f"{url}/summary", headers=headers)
    batch = await client.get("/reward-points/summaryBatch", headers=headers)
    assert single.status_code == 200, single.text
    parsed = single.json()
    assert parsed["customerId"] == customer
    assert parsed["summary"]["addedPointsList"][0]["description"] == AWKWARD
    assert parsed["summary"]["addedPointsList"][0]["reference-id"] == AWKWARD
    assert parsed["summary"]["redeemedPointsList"][0]["description"] == AWKWARD
    assert single.content == dumps(parsed)
    assert batch.content == dumps([parsed])


async def test_used_with_follows_the_usages_time_not_their_ids_nor_the_order_they_were_stored(
    database_url: str, tenant: str
) -> None:
    """Redemptions z, y, x drew from one lot in that order (their ids run against it); their
    usages were stored y, x, z (as an import might). usedWith is z, y, x in the summary built
    whole, the streamed one (PostgreSQL) and summaryBatch."""
    now = datetime.now(UTC).replace(microsecond=0)
    created = {"z": now - timedelta(minutes=3), "y": now - timedelta(minutes=2)}
    created["x"] = now - timedelta(minutes=1)
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(accounts).values(tenant=tenant, customer_id="c", created_at=now)
            )
            await conn.execute(
                insert(lots).values(
                    tenant=tenant,
                    id="lot",
                    customer_id="c",
                    description="d",
                    points=30,
                    used_points=30,
                    created_at=now - timedelta(minutes=4),
                    valid_until=now + timedelta(days=365),
                    all_points_after_creation=30,
                    request_hash="h",
                )
            )
            for key, at in created.items():
                await conn.execute(
                    insert(redemptions).values(
                        tenant=tenant,
                        id=key,
                        customer_id="c",
                        description="d",
                        points=10,
                        created_at=at,
                        all_points_after_creation=0,
                        request_hash="h",
                    )
                )
            for key in ("y", "x", "z"):
                await conn.execute(
                    insert(lot_usages).values(
                        tenant=tenant,
                        customer_id="c",
                        lot_id="lot",
                        redemption_id=key,
                        points=10,
                        created_at=created[key],
                    )
                )
    finally:
        await engine.dispose()
    headers = bearer(token(tenant))
    answers = []
    for entries in (1000, 0):  # built whole; on PostgreSQL streamed
        application = create_app(make_settings(database_url, summary_stream_entries=entries))
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                answers.append(await http.get("/reward-points/customer/c/summary", headers=headers))
                batch = await http.get("/reward-points/summaryBatch", headers=headers)
                answers.append(httpx.Response(200, json=batch.json()[0]))
        finally:
            await application.state.ledger.engine.dispose()
    for answer in answers:
        assert answer.status_code == 200, answer.text
        lot = answer.json()["summary"]["addedPointsList"][0]
        assert lot["usedWith"] == ["z", "y", "x"]
    assert "content-length" not in answers[2].headers
    if database_url.startswith("postgresql"):
        # The order holds whatever plan PostgreSQL picks, not only through the usages' index
        # (whose order is the list's): here their table is read in the order they were stored.
        engine = create_engine(make_settings(database_url))
        try:
            async with engine.begin() as conn:
                for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
                    await conn.execute(text(f"SET LOCAL {setting} = off"))
                params = {"tenant": tenant, "customer": "c", "most": 1000}
                document = (await conn.execute(_ONE_DOCUMENT, params)).scalar_one()
        finally:
            await engine.dispose()
        lot = json.loads(document)["summary"]["addedPointsList"][0]
        assert lot["usedWith"] == ["z", "y", "x"]


async def test_a_used_up_lot_is_listed_from_the_item_its_last_redemption_stored(
    app: Any,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    clock: FakeClock,
    database_url: str,
    tenant: str,
) -> None:
    """A lot whose last point is spent never changes again. The redemption that spends it
    stores its summary item (rewardpoints_lot_item), and summaries read that item; it is the
    same bytes as the item built from the lot's fields, by the tests' oracle and in SQL, whole,
    streamed and in summaryBatch. Lots with points left are built as before."""
    url = "/reward-points/customer/frozen"
    clock.advance(microseconds=987_654)  # timestamps below the millisecond are cut alike
    for lot_id, points in (("a", 10), ("b", 10), ("c", 10)):
        added = await client.post(
            f"{url}/addPoints",
            json={
                "id": f'{lot_id}"\\',
                "points": points,
                "description": AWKWARD,
                "reference-id": None if lot_id == "b" else AWKWARD,
                "validUntil": "2999-12-31T23:59:59.999Z",
            },
            headers=headers,
        )
        assert added.status_code == 201, added.text
    ledger = app.state.ledger

    async def stored_items() -> dict[str, str | None]:
        async with ledger.engine.begin() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, summary_item FROM lots WHERE tenant = :tenant"
                    " AND customer_id = 'frozen'"
                ),
                {"tenant": tenant},
            )
            return {row[0]: row[1] for row in rows}

    # r1 takes 5 of a; r2 the other 5 of a and 3 of b; r3 the other 7 of b: a and b are used
    # up by their last redemption, each with two in its usedWith; c is untouched. A lot with
    # points left has no stored item, whatever was drawn from it.
    for redemption_id, points in (('r1\\"', 5), ('r2\\"', 8), ('r3\\"', 7)):
        redeemed = await client.post(
            f"{url}/redeemPoints",
            json={"id": redemption_id, "points": points, "description": AWKWARD},
            headers=headers,
        )
        assert redeemed.status_code == 201, redeemed.text
        if redemption_id.startswith("r1"):
            assert set((await stored_items()).values()) == {None}
        if redemption_id.startswith("r2"):
            assert (await stored_items())['b"\\'] is None

    async with ledger.engine.connect() as conn:
        oracle = await summary_from_tables(conn, tenant, "frozen", clock.now)
    expected = dumps(oracle)
    listed = json.loads(expected)["summary"]["addedPointsList"]
    assert [(lot["usedPoints"], lot["usedWith"]) for lot in listed] == [
        (10, ['r1\\"', 'r2\\"']),
        (10, ['r2\\"', 'r3\\"']),
        (0, []),
    ]

    async def answers() -> list[bytes]:
        got = []
        for entries in (1000, 0):  # built whole; on PostgreSQL streamed
            async with served(database_url, clock, summary_stream_entries=entries) as http:
                single = await http.get(f"{url}/summary", headers=headers)
                batch = await http.get("/reward-points/summaryBatch", headers=headers)
            assert single.status_code == 200, single.text
            assert batch.status_code == 200, batch.text
            got += [single.content, batch.content]
        return got

    assert await answers() == [expected, b"[" + expected + b"]"] * 2

    stored = await stored_items()
    items = {lot["id"]: dumps(lot).decode() for lot in listed}
    assert stored == {'a"\\': items['a"\\'], 'b"\\': items['b"\\'], 'c"\\': None}
    # Summaries list a used-up lot from its stored item, not from its fields.
    marked = items['a"\\'].replace('"description":', '"description":"stored","was":', 1)
    async with ledger.engine.begin() as conn:
        await conn.execute(
            text("UPDATE lots SET summary_item = :item WHERE tenant = :tenant AND id = :id"),
            {"item": marked, "tenant": tenant, "id": 'a"\\'},
        )
    for answer in await answers():
        assert answer.count(b'"description":"stored","was":') == 1
    # The same bytes when the stored items are not there to read.
    async with ledger.engine.begin() as conn:
        await conn.execute(
            text("UPDATE lots SET summary_item = NULL WHERE tenant = :tenant"),
            {"tenant": tenant},
        )
    assert await answers() == [expected, b"[" + expected + b"]"] * 2
