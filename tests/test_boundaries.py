"""The ledger at the edges the rest of the suite steps around: a lot at exactly its
``validUntil`` and 1 ms before it, for every read and write that measures expiry, on the
database's clock set by the test; and a write racing the delete of its customer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app

from .conftest import make_settings

BASE = "/reward-points"
EXPIRY = datetime(2031, 5, 17, 12, 0, 0, 250_000, tzinfo=UTC)
MS = timedelta(milliseconds=1)


class SetClock:
    """A clock that reads what the test set, and stays there: each write's time is then
    exactly that moment (the database moves its own reading on by a microsecond per write)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def set_clock() -> SetClock:
    return SetClock(EXPIRY - timedelta(days=30))


@pytest.fixture
async def http(database_url: str, set_clock: SetClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url), clock=set_clock)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client
    finally:
        await app.state.ledger.engine.dispose()


def wire(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _customer_with_expiring_lot(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Customer c: 10 points expiring at EXPIRY, 1 point that outlives it."""
    for body in (
        {"id": "expiring", "points": 10, "validUntil": wire(EXPIRY)},
        {"id": "lasting", "points": 1, "validUntil": wire(EXPIRY + timedelta(days=365))},
    ):
        added = await http.post(f"{BASE}/customer/c/addPoints", json=body, headers=headers)
        assert added.status_code == 201, added.text


async def _reads(http: httpx.AsyncClient, headers: dict[str, str]) -> list[Any]:
    """The balance, the summary's and the summaryBatch's active points, and the public
    balance, as a client reads them."""
    balance = await http.get(f"{BASE}/customer/c", headers=headers)
    summary = await http.get(f"{BASE}/customer/c/summary", headers=headers)
    batch = await http.get(f"{BASE}/summaryBatch", headers=headers)
    for answer in (balance, summary, batch):
        assert answer.status_code == 200, answer.text
    return [balance.json(), summary.json()["activePoints"], batch.json()[0]["activePoints"]]


async def test_a_lot_counts_until_1_ms_before_its_valid_until_and_not_at_it(
    http: httpx.AsyncClient, headers: dict[str, str], set_clock: SetClock
) -> None:
    await _customer_with_expiring_lot(http, headers)

    set_clock.now = EXPIRY - MS
    assert await _reads(http, headers) == [11, 11, 11]
    set_clock.now = EXPIRY
    assert await _reads(http, headers) == [1, 1, 1]


async def test_a_redemption_1_ms_before_valid_until_spends_the_lot(
    http: httpx.AsyncClient, headers: dict[str, str], set_clock: SetClock
) -> None:
    await _customer_with_expiring_lot(http, headers)
    set_clock.now = EXPIRY - MS

    redeemed = await http.post(
        f"{BASE}/customer/c/redeemPoints", json={"points": 11}, headers=headers
    )

    assert redeemed.status_code == 201, redeemed.text
    set_clock.now = EXPIRY
    assert await _reads(http, headers) == [0, 0, 0]


async def test_a_redemption_at_valid_until_does_not_spend_the_lot(
    http: httpx.AsyncClient, headers: dict[str, str], set_clock: SetClock
) -> None:
    await _customer_with_expiring_lot(http, headers)
    set_clock.now = EXPIRY

    refused = await http.post(
        f"{BASE}/customer/c/redeemPoints", json={"points": 2}, headers=headers
    )
    spent = await http.post(f"{BASE}/customer/c/redeemPoints", json={"points": 1}, headers=headers)

    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"] == "Not enough reward points: requested 2, available 1"
    assert spent.status_code == 201, spent.text
    summary = (await http.get(f"{BASE}/customer/c/summary", headers=headers)).json()
    used = {lot["id"]: lot["usedPoints"] for lot in summary["summary"]["addedPointsList"]}
    assert used == {"expiring": 0, "lasting": 1}


async def test_a_lot_valid_until_the_moment_it_is_added_is_refused_1_ms_later_accepted(
    http: httpx.AsyncClient, headers: dict[str, str], set_clock: SetClock
) -> None:
    set_clock.now = EXPIRY
    at = await http.post(
        f"{BASE}/customer/d/addPoints",
        json={"points": 5, "validUntil": wire(EXPIRY)},
        headers=headers,
    )
    set_clock.now = EXPIRY - MS
    before = await http.post(
        f"{BASE}/customer/d/addPoints",
        json={"points": 5, "validUntil": wire(EXPIRY)},
        headers=headers,
    )

    assert at.status_code == 400, at.text
    assert "validUntil" in at.text
    assert before.status_code == 201, before.text
    balance = await http.get(f"{BASE}/customer/d", headers=headers)
    assert balance.json() == 5


async def test_entries_are_written_at_the_database_clocks_time_and_default_valid_until(
    http: httpx.AsyncClient, headers: dict[str, str], set_clock: SetClock
) -> None:
    """createdAt and the default validUntil (36 calendar months) come from one clock for
    every kind of write: addPoints, an order's points and startPoints."""
    set_clock.now = datetime(2030, 1, 31, 8, 0, 0, 123_000, tzinfo=UTC)
    await http.post(f"{BASE}/customer/e/addPoints", json={"points": 1}, headers=headers)
    order = {"orderId": "o-1", "total": {"amount": 5, "currency": "EUR"}, "status": "COMPLETED"}
    awarded = await http.post(f"{BASE}/customer/e/orders", json=order, headers=headers)
    created = await http.post(
        f"{BASE}/customer/f", json={"startPoints": {"points": 3}}, headers=headers
    )
    assert created.status_code == 200, created.text

    for customer in ("e", "f"):
        summary = (await http.get(f"{BASE}/customer/{customer}/summary", headers=headers)).json()
        for lot in summary["summary"]["addedPointsList"]:
            assert lot["createdAt"] == "2030-01-31T08:00:00.123+00:00", lot
            assert lot["validUntil"] == "2033-01-31T08:00:00.123+00:00", lot
    assert awarded.status_code == 201, awarded.text
    assert len(summary["summary"]["addedPointsList"]) == 1
    e_lots = (await http.get(f"{BASE}/customer/e/summary", headers=headers)).json()
    assert len(e_lots["summary"]["addedPointsList"]) == 2


async def test_adds_racing_deletes_of_their_customer_answer_as_if_one_after_the_other(
    database_url: str, headers: dict[str, str]
) -> None:
    """A write that waits for its customer's delete applies after it, to a new entry; none
    fails on the account the delete took away."""
    app = create_app(make_settings(database_url, database_pool_size=12))
    transport = httpx.ASGITransport(app=app)
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

            async def adder() -> None:
                for _ in range(100):
                    answer = await client.post(
                        f"{BASE}/customer/raced/addPoints", json={"points": 1}, headers=headers
                    )
                    statuses.append(answer.status_code)

            async def deleter() -> None:
                for _ in range(100):
                    answer = await client.delete(f"{BASE}/customer/raced", headers=headers)
                    statuses.append(answer.status_code)

            await asyncio.gather(*(adder() for _ in range(6)), *(deleter() for _ in range(6)))
            summary = await client.get(f"{BASE}/customer/raced/summary", headers=headers)
            balance = await client.get(f"{BASE}/customer/raced", headers=headers)
    finally:
        await app.state.ledger.engine.dispose()
    assert set(statuses) <= {200, 201, 404}, sorted(set(statuses))
    assert statuses.count(201) == 600
    if summary.status_code == 200:
        lots = summary.json()["summary"]["addedPointsList"]
        assert balance.json() == len(lots) == summary.json()["activePoints"]
    else:
        assert summary.status_code == balance.status_code == 404


async def test_writes_sent_together_all_take_the_clocks_time_and_expire_at_once(
    http: httpx.AsyncClient, headers: dict[str, str], set_clock: SetClock
) -> None:
    """Additions for many customers at one moment go to the database together; each reads the
    clock itself, so all are written at exactly that moment and their default validUntil (36
    months on) ends at exactly the same one."""
    customers = [f"together-{number}" for number in range(12)]
    set_clock.now = datetime(2030, 2, 1, tzinfo=UTC)
    for customer in customers:  # known already: a new customer's first write goes alone
        known = await http.post(
            f"{BASE}/customer/{customer}/addPoints",
            json={"points": 10, "validUntil": "2099-01-01T00:00:00Z"},
            headers=headers,
        )
        assert known.status_code == 201, known.text
    set_clock.now = datetime(2030, 3, 1, 9, 30, 0, 500_000, tzinfo=UTC)
    added = await asyncio.gather(
        *(
            http.post(f"{BASE}/customer/{customer}/addPoints", json={"points": 1}, headers=headers)
            for customer in customers
        )
    )
    assert [answer.status_code for answer in added] == [201] * len(customers)
    expiry = datetime(2033, 3, 1, 9, 30, 0, 500_000, tzinfo=UTC)

    async def balances() -> list[int]:
        answers = [await http.get(f"{BASE}/customer/{c}", headers=headers) for c in customers]
        return [answer.json() for answer in answers]

    set_clock.now = expiry - MS
    assert await balances() == [11] * len(customers)
    set_clock.now = expiry
    assert await balances() == [10] * len(customers)
