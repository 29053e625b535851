"""The ledger rules of CONTRACT.md section 2, proved through the HTTP API on both databases:
timestamps, defaults, FIFO spending, expiry on the injected clock, and safe retries by id."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from .conftest import served
from .support import FakeClock

Headers = dict[str, str]

BASE = "/reward-points"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
START = datetime(2030, 5, 11, 18, 32, 18, 590000, tzinfo=UTC)


def url(customer_id: str, action: str = "") -> str:
    return f"{BASE}/customer/{customer_id}{action}"


def wire(moment: datetime) -> str:
    """How a timestamp is written out, computed here independently of the service."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+00:00"


def entry_conflict_body(entry_id: str) -> dict[str, Any]:
    return {
        "status": 409,
        "type": "application/json",
        "message": "Reward Point Entry not Created",
        "moreInfo": "",
        "details": [
            {
                "field": "id",
                "type": None,
                "message": f"An entry with id '{entry_id}' already exists with other content",
                "moreInfo": "",
            }
        ],
    }


async def post_add(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(url(customer_id, "/addPoints"), json=body, headers=headers)


async def post_redeem(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(url(customer_id, "/redeemPoints"), json=body, headers=headers)


async def add(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, points: int, **fields: Any
) -> None:
    response = await post_add(client, headers, customer_id, {"points": points, **fields})
    assert response.status_code == 201, response.text
    assert response.content == b""


async def redeem(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, points: int, **fields: Any
) -> None:
    response = await post_redeem(client, headers, customer_id, {"points": points, **fields})
    assert response.status_code == 201, response.text
    assert response.content == b""


async def balance(client: httpx.AsyncClient, headers: Headers, customer_id: str) -> int:
    response = await client.get(url(customer_id), headers=headers)
    assert response.status_code == 200, response.text
    value = response.json()
    assert type(value) is int
    return value


async def summary(client: httpx.AsyncClient, headers: Headers, customer_id: str) -> dict[str, Any]:
    response = await client.get(url(customer_id, "/summary"), headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def state(client: httpx.AsyncClient, headers: Headers, customer_id: str) -> Any:
    """Everything a client can see of one customer."""
    return (
        await balance(client, headers, customer_id),
        await summary(client, headers, customer_id),
    )


def lots(result: dict[str, Any]) -> list[dict[str, Any]]:
    added: list[dict[str, Any]] = result["summary"]["addedPointsList"]
    return added


def redemptions(result: dict[str, Any]) -> list[dict[str, Any]]:
    redeemed: list[dict[str, Any]] = result["summary"]["redeemedPointsList"]
    return redeemed


def lot_view(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(id, points, usedPoints, usedWith, allPointsAfterCreation) of every lot, in order."""
    return [
        (
            lot["id"],
            lot["points"],
            lot["usedPoints"],
            lot["usedWith"],
            lot["allPointsAfterCreation"],
        )
        for lot in lots(result)
    ]


def redemption_view(result: dict[str, Any]) -> list[tuple[Any, ...]]:
    """(id, points, allPointsAfterCreation) of every redemption, in order."""
    return [(r["id"], r["points"], r["allPointsAfterCreation"]) for r in redemptions(result)]


def assert_insufficient(
    response: httpx.Response, customer_id: str, requested: int, available: int
) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) <= {"type", "title", "status", "detail", "instance", "errors"}
    assert (body["type"], body["title"], body["status"]) == ("about:blank", "Bad Request", 400)
    assert body["instance"] == f"/customer/{customer_id}/redeemPoints"
    numbers = [int(n) for n in re.findall(r"\d+", body["detail"])]
    assert requested in numbers and available in numbers, body["detail"]


# ---- timestamps -----------------------------------------------------------------------------


async def test_timestamps_are_utc_with_milliseconds_and_explicit_offset(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START
    await add(client, headers, "c1", 2000)
    await redeem(client, headers, "c1", 50)
    clock.now += timedelta(microseconds=789_456)  # below the millisecond, cut off on the wire
    await add(client, headers, "c1", 90, validUntil="2035-02-03T04:05:06.7891+00:00")

    result = await summary(client, headers, "c1")
    batch = (await client.get(f"{BASE}/summaryBatch", headers=headers)).json()

    first, second = lots(result)
    [redemption] = redemptions(result)
    assert first["createdAt"] == "2030-05-11T18:32:18.591+00:00"
    assert first["validUntil"] == "2033-05-11T18:32:18.591+00:00"
    assert redemption["createdAt"] == "2030-05-11T18:32:18.592+00:00"
    assert second["createdAt"] == "2030-05-11T18:32:19.382+00:00"
    assert second["validUntil"] == "2035-02-03T04:05:06.789+00:00"
    for source in (result, *batch):
        for entry in lots(source):
            assert TIMESTAMP.match(entry["createdAt"]), entry
            assert TIMESTAMP.match(entry["validUntil"]), entry
        for entry in redemptions(source):
            assert TIMESTAMP.match(entry["createdAt"]), entry


@pytest.mark.parametrize(
    ("given", "returned"),
    [
        ("2031-01-01T12:00:00+02:00", "2031-01-01T10:00:00.000+00:00"),
        ("2031-01-01T12:00:00-05:30", "2031-01-01T17:30:00.000+00:00"),
        ("2031-01-01T12:00:00.250Z", "2031-01-01T12:00:00.250+00:00"),
        ("2031-01-01T12:00:00", "2031-01-01T12:00:00.000+00:00"),
    ],
)
async def test_valid_until_is_returned_in_utc(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock, given: str, returned: str
) -> None:
    clock.now = START

    await add(client, headers, "c1", 10, validUntil=given)

    [lot] = lots(await summary(client, headers, "c1"))
    assert lot["validUntil"] == returned


async def test_valid_until_without_offset_expires_at_that_utc_time(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START
    await add(client, headers, "c1", 10, validUntil="2031-01-01T12:00:00")

    clock.now = datetime(2031, 1, 1, 11, 59, 59, 998000, tzinfo=UTC)  # read as 11:59:59.999
    still_valid = await balance(client, headers, "c1")
    clock.now = datetime(2031, 1, 1, 11, 59, 59, 999000, tzinfo=UTC)  # read as 12:00:00.000
    expired = await balance(client, headers, "c1")

    assert (still_valid, expired) == (10, 0)


async def test_default_valid_until_is_36_months_after_creation(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = datetime(2029, 7, 15, 9, 30, 0, tzinfo=UTC)

    await add(client, headers, "c1", 10)

    [lot] = lots(await summary(client, headers, "c1"))
    assert lot["createdAt"] == "2029-07-15T09:30:00.001+00:00"
    assert lot["validUntil"] == "2032-07-15T09:30:00.001+00:00"


async def test_default_valid_until_is_clamped_to_the_end_of_the_month(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = datetime(2028, 2, 29, 8, 0, 0, tzinfo=UTC)  # leap day; 2031 has no Feb 29

    await add(client, headers, "c1", 10)
    create = await client.post(
        url("c2"), params={"siteCode": "main"}, json={"startPoints": {"points": 5}}, headers=headers
    )

    assert create.status_code == 200
    [lot] = lots(await summary(client, headers, "c1"))
    [start_lot] = lots(await summary(client, headers, "c2"))
    assert lot["createdAt"] == "2028-02-29T08:00:00.001+00:00"
    assert lot["validUntil"] == "2031-02-28T08:00:00.001+00:00"
    assert start_lot["createdAt"] == "2028-02-29T08:00:00.002+00:00"
    assert start_lot["validUntil"] == "2031-02-28T08:00:00.002+00:00"


@pytest.fixture
async def one_month_client(database_url: str, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """A service configured with a validity of one month."""
    async with served(database_url, clock, validity_months=1) as http:
        yield http


async def test_default_valid_until_follows_the_configured_validity(
    one_month_client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = datetime(2030, 1, 31, 23, 0, 0, tzinfo=UTC)

    await add(one_month_client, headers, "c1", 10)

    [lot] = lots(await summary(one_month_client, headers, "c1"))
    assert lot["validUntil"] == "2030-02-28T23:00:00.001+00:00"


async def test_valid_until_not_in_the_future_is_400_and_creates_nothing(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START
    reading = START + timedelta(milliseconds=1)  # what the ledger reads during the request

    at_now = await post_add(client, headers, "c1", {"points": 10, "validUntil": wire(reading)})
    clock.now = START
    past = await post_add(
        client, headers, "c1", {"points": 10, "validUntil": "2020-01-01T00:00:00Z"}
    )

    for response in (at_now, past):
        assert response.status_code == 400
        body = response.json()
        assert (body["status"], body["instance"]) == (400, "/customer/c1/addPoints")
        assert "validUntil" in body["detail"]
    assert (await client.get(url("c1"), headers=headers)).status_code == 404

    clock.now = START
    await add(client, headers, "c1", 10, validUntil=wire(reading + timedelta(milliseconds=1)))
    assert lots(await summary(client, headers, "c1"))[0]["points"] == 10


# ---- descriptions, ids and computed fields -------------------------------------------------


async def test_descriptions_default_to_points_added_and_points_redeemed(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 100)
    await add(client, headers, "c1", 10, description="order 17")
    await redeem(client, headers, "c1", 20)
    await redeem(client, headers, "c1", 5, description="voucher")

    result = await summary(client, headers, "c1")

    assert [lot["description"] for lot in lots(result)] == ["points added", "order 17"]
    assert [r["description"] for r in redemptions(result)] == ["points redeemed", "voucher"]


async def test_server_makes_uuid4_ids_when_the_client_gives_none(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 10)
    await add(client, headers, "c1", 10)
    await redeem(client, headers, "c1", 15)
    await redeem(client, headers, "c1", 1)

    result = await summary(client, headers, "c1")

    ids = [e["id"] for e in lots(result)] + [e["id"] for e in redemptions(result)]
    assert all(UUID4.match(entry_id) for entry_id in ids), ids
    assert len(set(ids)) == 4
    assert lots(result)[0]["usedWith"] == [redemptions(result)[0]["id"]]


async def test_computed_fields_sent_by_the_client_are_ignored(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START

    await add(
        client,
        headers,
        "c1",
        40,
        id="lot-1",
        createdAt="2000-01-01T00:00:00.000+00:00",
        allPointsAfterCreation=999_999,
        usedPoints=39,
        usedWith=["someone-else"],
    )
    await redeem(
        client,
        headers,
        "c1",
        15,
        id="red-1",
        createdAt="2000-01-01T00:00:00.000+00:00",
        allPointsAfterCreation=123_456,
    )

    result = await summary(client, headers, "c1")
    [lot] = lots(result)
    [redemption] = redemptions(result)
    assert lot["createdAt"] == wire(START + timedelta(milliseconds=1))
    assert lot_view(result) == [("lot-1", 40, 15, ["red-1"], 40)]
    assert redemption["createdAt"] == wire(START + timedelta(milliseconds=2))
    assert redemption_view(result) == [("red-1", 15, 25)]
    assert result["activePoints"] == 25


# ---- FIFO -----------------------------------------------------------------------------------


async def test_redeem_spends_oldest_lot_first_across_lots_and_redemptions(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    # Ids run against creation order, so spending by id order would show.
    await add(client, headers, "c1", 100, id="lot-c")
    await add(client, headers, "c1", 50, id="lot-b")
    await add(client, headers, "c1", 30, id="lot-a")
    await redeem(client, headers, "c1", 120, id="red-z")
    await redeem(client, headers, "c1", 40, id="red-y")
    await add(client, headers, "c1", 5, id="lot-0")

    result = await summary(client, headers, "c1")

    assert lot_view(result) == [
        ("lot-c", 100, 100, ["red-z"], 100),
        ("lot-b", 50, 50, ["red-z", "red-y"], 150),
        ("lot-a", 30, 10, ["red-y"], 180),
        ("lot-0", 5, 0, [], 25),
    ]
    assert redemption_view(result) == [("red-z", 120, 60), ("red-y", 40, 20)]
    assert result["activePoints"] == 25
    assert await balance(client, headers, "c1") == 25


async def test_one_redemption_spans_three_lots(client: httpx.AsyncClient, headers: Headers) -> None:
    await add(client, headers, "c1", 10, id="l1")
    await add(client, headers, "c1", 20, id="l2")
    await add(client, headers, "c1", 30, id="l3")
    await add(client, headers, "c1", 40, id="l4")

    await redeem(client, headers, "c1", 45, id="big")

    result = await summary(client, headers, "c1")
    assert lot_view(result) == [
        ("l1", 10, 10, ["big"], 10),
        ("l2", 20, 20, ["big"], 30),
        ("l3", 30, 15, ["big"], 60),
        ("l4", 40, 0, [], 100),
    ]
    assert redemption_view(result) == [("big", 45, 55)]
    assert result["activePoints"] == 55


async def test_redeeming_every_point_empties_the_balance(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 10, id="l1")
    await add(client, headers, "c1", 20, id="l2")

    await redeem(client, headers, "c1", 30, id="all")
    one_more = await post_redeem(client, headers, "c1", {"points": 1})

    assert_insufficient(one_more, "c1", 1, 0)
    result = await summary(client, headers, "c1")
    assert lot_view(result) == [("l1", 10, 10, ["all"], 10), ("l2", 20, 20, ["all"], 30)]
    assert redemption_view(result) == [("all", 30, 0)]
    assert await balance(client, headers, "c1") == 0


async def test_redeeming_more_than_active_points_is_400_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 30)
    await add(client, headers, "c1", 20)
    await redeem(client, headers, "c1", 10)
    before = await state(client, headers, "c1")

    response = await post_redeem(client, headers, "c1", {"points": 41, "id": "too-much"})

    assert_insufficient(response, "c1", 41, 40)
    assert await state(client, headers, "c1") == before
    # The refused id was not recorded: it is free for other content.
    await redeem(client, headers, "c1", 40, id="too-much")
    assert await balance(client, headers, "c1") == 0


class TestEntriesWhenTheClockStopsOrGoesBack:
    """A customer's entries follow the order they were written in, even when the database's
    clock stands still or is stepped back (rewardpoints_entry_time): oldest first stays the
    order of writing."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(START, step=timedelta(0))

    async def test_lots_written_at_one_instant_are_listed_and_spent_in_the_order_written(
        self, client: httpx.AsyncClient, headers: Headers
    ) -> None:
        # Bytewise, "Lot-c" sorts before "lot-a": ids do not decide the order.
        await add(client, headers, "c1", 10, id="lot-b")
        await add(client, headers, "c1", 10, id="lot-a")
        await add(client, headers, "c1", 10, id="Lot-c")

        await redeem(client, headers, "c1", 15, id="red-b")
        await redeem(client, headers, "c1", 1, id="red-a")

        result = await summary(client, headers, "c1")
        assert {lot["createdAt"] for lot in lots(result)} == {wire(START)}
        assert lot_view(result) == [
            ("lot-b", 10, 10, ["red-b"], 10),
            ("lot-a", 10, 6, ["red-b", "red-a"], 20),
            ("Lot-c", 10, 0, [], 30),
        ]
        assert [r["id"] for r in redemptions(result)] == ["red-b", "red-a"]
        batch = (await client.get(f"{BASE}/summaryBatch", headers=headers)).json()
        assert batch == [result]

    async def test_a_clock_stepped_back_does_not_put_a_new_lot_before_older_ones(
        self, client: httpx.AsyncClient, headers: Headers, clock: FakeClock
    ) -> None:
        await add(client, headers, "c1", 10, id="first")
        clock.now = START - timedelta(hours=1)
        await add(client, headers, "c1", 10, id="second")
        await redeem(client, headers, "c1", 10, id="spend")

        result = await summary(client, headers, "c1")
        assert [(lot["id"], lot["usedPoints"]) for lot in lots(result)] == [
            ("first", 10),
            ("second", 0),
        ]
        assert [lot["createdAt"] for lot in lots(result)] == [wire(START)] * 2


# ---- expiry ---------------------------------------------------------------------------------


async def _old_lot_expired(client: httpx.AsyncClient, headers: Headers, clock: FakeClock) -> None:
    """An old lot of 100 valid for one day, a newer lot of 50 valid for years; two days pass."""
    clock.now = START
    await add(client, headers, "c1", 100, id="old", validUntil=wire(START + timedelta(days=1)))
    await add(client, headers, "c1", 50, id="new")
    assert await balance(client, headers, "c1") == 150
    clock.advance(days=2)


async def test_expired_lot_is_not_counted_but_still_listed(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    await _old_lot_expired(client, headers, clock)

    result = await summary(client, headers, "c1")

    assert await balance(client, headers, "c1") == 50
    assert result["activePoints"] == 50
    assert lot_view(result) == [("old", 100, 0, [], 100), ("new", 50, 0, [], 150)]
    [batch_entry] = (await client.get(f"{BASE}/summaryBatch", headers=headers)).json()
    assert batch_entry["activePoints"] == 50


async def test_redeem_skips_an_expired_lot_even_though_it_is_older(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    await _old_lot_expired(client, headers, clock)

    await redeem(client, headers, "c1", 30, id="r1")

    result = await summary(client, headers, "c1")
    assert lot_view(result) == [("old", 100, 0, [], 100), ("new", 50, 30, ["r1"], 150)]
    assert redemption_view(result) == [("r1", 30, 20)]
    assert result["activePoints"] == 20


async def test_redeem_that_needs_expired_points_is_400_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    await _old_lot_expired(client, headers, clock)
    before = await state(client, headers, "c1")

    response = await post_redeem(client, headers, "c1", {"points": 60})

    assert_insufficient(response, "c1", 60, 50)
    assert await state(client, headers, "c1") == before


async def test_unused_rest_of_a_partly_spent_lot_expires(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START
    await add(client, headers, "c1", 100, id="short", validUntil=wire(START + timedelta(hours=1)))
    await redeem(client, headers, "c1", 40, id="r1")
    clock.advance(hours=2)

    await add(client, headers, "c1", 10, id="later")

    result = await summary(client, headers, "c1")
    assert lot_view(result) == [("short", 100, 40, ["r1"], 100), ("later", 10, 0, [], 10)]
    assert result["activePoints"] == 10
    assert await balance(client, headers, "c1") == 10


async def test_lot_expires_exactly_at_valid_until(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    valid_until = START + timedelta(days=10)
    clock.now = START
    await add(client, headers, "c1", 10, validUntil=wire(valid_until))

    clock.now = valid_until - timedelta(milliseconds=2)  # read 1 ms before validUntil
    before = await balance(client, headers, "c1")
    clock.now = valid_until - timedelta(milliseconds=1)  # read exactly at validUntil
    at = await balance(client, headers, "c1")

    assert (before, at) == (10, 0)


# ---- retries by client id -------------------------------------------------------------------


async def test_add_points_retry_with_same_id_and_content_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START
    body = {
        "id": "order-1",
        "points": 100,
        "reference-id": "ORD-1",
        "description": "order bonus",
        "validUntil": "2031-06-01T12:00:00+02:00",
    }
    assert (await post_add(client, headers, "c1", body)).status_code == 201
    await redeem(client, headers, "c1", 30, id="r1")
    before = await state(client, headers, "c1")
    clock.advance(hours=5)

    same = await post_add(client, headers, "c1", body)
    # The same instant in another offset, and computed fields, are the same content.
    same_instant = await post_add(
        client,
        headers,
        "c1",
        {
            **body,
            "validUntil": "2031-06-01T10:00:00.000Z",
            "createdAt": "2001-01-01T00:00:00Z",
            "usedPoints": 3,
            "allPointsAfterCreation": 7,
            "usedWith": ["x"],
        },
    )

    for response in (same, same_instant):
        assert response.status_code == 201
        assert response.content == b""
    assert await state(client, headers, "c1") == before


async def test_add_points_retry_without_valid_until_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    await add(client, headers, "c1", 100, id="order-1")
    before = await state(client, headers, "c1")
    clock.advance(days=3)

    retry = await post_add(client, headers, "c1", {"id": "order-1", "points": 100})

    assert (retry.status_code, retry.content) == (201, b"")
    assert await state(client, headers, "c1") == before


async def test_add_points_retry_after_its_valid_until_passed_answers_as_the_first_time(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = START
    body = {"id": "order-1", "points": 100, "validUntil": wire(START + timedelta(hours=1))}
    assert (await post_add(client, headers, "c1", body)).status_code == 201
    clock.advance(hours=2)
    before = await state(client, headers, "c1")

    retry = await post_add(client, headers, "c1", body)

    assert (retry.status_code, retry.content) == (201, b"")
    assert await state(client, headers, "c1") == before


@pytest.mark.parametrize(
    "change",
    [
        {"points": 101},
        {"description": "another text"},
        {"reference-id": "ORD-2"},
        {"reference-id": None},
        {"validUntil": "2031-06-01T12:00:00Z"},
    ],
)
async def test_add_points_same_id_with_other_content_is_409_and_changes_nothing(
    client: httpx.AsyncClient,
    headers: Headers,
    clock: FakeClock,
    change: dict[str, Any],
) -> None:
    clock.now = START
    body = {
        "id": "order-1",
        "points": 100,
        "reference-id": "ORD-1",
        "description": "order bonus",
        "validUntil": "2031-06-01T12:00:00+02:00",
    }
    assert (await post_add(client, headers, "c1", body)).status_code == 201
    before = await state(client, headers, "c1")

    response = await post_add(client, headers, "c1", {**body, **change})

    assert response.status_code == 409
    assert response.json() == entry_conflict_body("order-1")
    assert await state(client, headers, "c1") == before


async def test_redeem_retry_with_same_id_and_content_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    await add(client, headers, "c1", 60, id="l1")
    await add(client, headers, "c1", 40, id="l2")
    await redeem(client, headers, "c1", 80, id="r1", description="voucher")
    before = await state(client, headers, "c1")
    clock.advance(minutes=10)

    # Only 20 points are left: a retry must still answer as the first time did.
    retry = await post_redeem(
        client,
        headers,
        "c1",
        {"id": "r1", "points": 80, "description": "voucher", "createdAt": "2001-01-01T00:00:00Z"},
    )

    assert (retry.status_code, retry.content) == (201, b"")
    assert await state(client, headers, "c1") == before
    assert lot_view(before[1]) == [("l1", 60, 60, ["r1"], 60), ("l2", 40, 20, ["r1"], 100)]


@pytest.mark.parametrize("change", [{"points": 10}, {"description": "other"}])
async def test_redeem_same_id_with_other_content_is_409_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, change: dict[str, Any]
) -> None:
    await add(client, headers, "c1", 100)
    body = {"id": "r1", "points": 30, "description": "voucher"}
    assert (await post_redeem(client, headers, "c1", body)).status_code == 201
    before = await state(client, headers, "c1")

    response = await post_redeem(client, headers, "c1", {**body, **change})

    assert response.status_code == 409
    assert response.json() == entry_conflict_body("r1")
    assert await state(client, headers, "c1") == before


async def test_lot_id_reused_for_a_redemption_is_409(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 100, id="shared-id")
    before = await state(client, headers, "c1")

    response = await post_redeem(client, headers, "c1", {"id": "shared-id", "points": 100})

    assert response.status_code == 409
    assert response.json() == entry_conflict_body("shared-id")
    assert await state(client, headers, "c1") == before


async def test_redemption_id_reused_for_a_lot_is_409(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 100)
    await redeem(client, headers, "c1", 30, id="shared-id")
    before = await state(client, headers, "c1")

    response = await post_add(client, headers, "c1", {"id": "shared-id", "points": 30})

    assert response.status_code == 409
    assert response.json() == entry_conflict_body("shared-id")
    assert await state(client, headers, "c1") == before


async def test_entry_id_of_one_customer_is_free_for_another(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    """Entry ids are unique per customer, as an Emporix client expects: the same id on two
    customers is two entries."""
    await add(client, headers, "c1", 100, id="lot-1")
    await redeem(client, headers, "c1", 10, id="red-1")
    await add(client, headers, "c2", 100)
    before = await state(client, headers, "c1")

    lot_elsewhere = await post_add(client, headers, "c3", {"id": "lot-1", "points": 40})
    redemption_elsewhere = await post_redeem(client, headers, "c2", {"id": "red-1", "points": 10})

    assert lot_elsewhere.status_code == 201
    assert redemption_elsewhere.status_code == 201
    assert await state(client, headers, "c1") == before
    assert await balance(client, headers, "c2") == 90
    assert await balance(client, headers, "c3") == 40
    c2 = (await client.get(url("c2", "/summary"), headers=headers)).json()["summary"]
    assert [entry["id"] for entry in c2["redeemedPointsList"]] == ["red-1"]


async def test_one_id_sent_at_once_as_a_lot_and_a_redemption_is_taken_by_one_of_them(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    """Within a customer an id names one entry, lot or redemption, checked under the
    customer's lock: of a lot and a redemption sent at the same moment with one id, exactly
    one is written."""
    rounds = 20
    for number in range(rounds):
        customer = f"race-{number}"
        await add(client, headers, customer, 100)
        entry_id = f"both-{number}"
        lot, redemption = await asyncio.gather(
            post_add(client, headers, customer, {"id": entry_id, "points": 5}),
            post_redeem(client, headers, customer, {"id": entry_id, "points": 5}),
        )
        assert sorted([lot.status_code, redemption.status_code]) == [201, 409]
        summary = (await client.get(url(customer, "/summary"), headers=headers)).json()
        named = [
            entry["id"]
            for entries in summary["summary"].values()
            for entry in entries
            if entry["id"] == entry_id
        ]
        assert named == [entry_id]
        assert summary["activePoints"] == (105 if lot.status_code == 201 else 95)
