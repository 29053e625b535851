"""Concurrent writes against a real ``rewardpoints serve``: no point is spent twice, no update
is lost, and every ``allPointsAfterCreation`` is a true running balance. The server runs two
worker processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from .conftest import TEST_SECRET
from .support import running_server

pytestmark = pytest.mark.slow

BASE = "/reward-points"
Headers = dict[str, str]


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server with two workers for the whole module."""
    workdir = tmp_path_factory.mktemp("server")
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    with contextlib.ExitStack() as stack:
        # The server reads `.env` from its working directory: start it where there is none.
        with contextlib.chdir(workdir):
            base = stack.enter_context(running_server(env, workers=2))
        yield base


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=server, limits=limits, timeout=30.0) as client:
        yield client


def url(customer_id: str, action: str = "") -> str:
    return f"{BASE}/customer/{customer_id}{action}"


async def add(http: httpx.AsyncClient, headers: Headers, customer: str, points: int) -> int:
    response = await http.post(
        url(customer, "/addPoints"), json={"points": points}, headers=headers
    )
    return response.status_code


async def summary_of(http: httpx.AsyncClient, headers: Headers, customer: str) -> Any:
    response = await http.get(url(customer, "/summary"), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def balance_of(http: httpx.AsyncClient, headers: Headers, customer: str) -> int:
    response = await http.get(url(customer), headers=headers)
    assert response.status_code == 200, response.text
    value = response.json()
    assert isinstance(value, int)
    return value


def created(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["createdAt"])


def assert_in_created_order(entries: list[dict[str, Any]]) -> None:
    moments = [created(entry) for entry in entries]
    assert moments == sorted(moments)


def replay(summary: dict[str, Any]) -> int:
    """Apply the added and redeemed entries in ``createdAt`` order and check each entry's
    ``allPointsAfterCreation`` against the running balance; returns the final balance.

    Timestamps go out with millisecond precision, so entries from one millisecond are
    replayed in whichever order the balance allows: among them, an entry fits next when its
    value is the running balance after it. (Two entries that both fit have the same delta and
    the same value, so the choice between them changes nothing.)"""
    lists = summary["summary"]
    added = lists["addedPointsList"]
    redeemed = lists["redeemedPointsList"]
    assert_in_created_order(added)
    assert_in_created_order(redeemed)
    entries = [(created(e), e["points"], e["allPointsAfterCreation"]) for e in added]
    entries += [(created(e), -e["points"], e["allPointsAfterCreation"]) for e in redeemed]
    entries.sort(key=lambda entry: entry[0])
    balance = 0
    position = 0
    while position < len(entries):
        moment = entries[position][0]
        group = [entry for entry in entries[position:] if entry[0] == moment]
        position += len(group)
        while group:
            fitting = [entry for entry in group if entry[2] == balance + entry[1]]
            assert fitting, f"no entry at {moment} continues the running balance {balance}: {group}"
            group.remove(fitting[0])
            balance += fitting[0][1]
    return balance


async def test_parallel_redemptions_never_spend_a_point_twice(
    http: httpx.AsyncClient, headers: Headers
) -> None:
    for points in (25, 25, 25, 25):  # lots of 25: some redemptions of 10 span two lots
        assert await add(http, headers, "c1", points) == 201
    assert await balance_of(http, headers, "c1") == 100

    responses = await asyncio.gather(
        *(
            http.post(url("c1", "/redeemPoints"), json={"points": 10}, headers=headers)
            for _ in range(50)
        )
    )

    statuses = [response.status_code for response in responses]
    assert statuses.count(201) == 10, statuses
    assert statuses.count(400) == 40, statuses
    for response in responses:
        if response.status_code == 400:
            detail = response.json()["detail"]
            assert "requested 10" in detail
            assert "available 0" in detail
    assert await balance_of(http, headers, "c1") == 0
    summary = await summary_of(http, headers, "c1")
    assert summary["activePoints"] == 0
    lots = summary["summary"]["addedPointsList"]
    redemptions = summary["summary"]["redeemedPointsList"]
    assert len(redemptions) == 10
    redemption_ids = {redemption["id"] for redemption in redemptions}
    assert len(redemption_ids) == 10
    for lot in lots:
        assert 0 <= lot["usedPoints"] <= lot["points"]
        assert set(lot["usedWith"]) <= redemption_ids
    assert sum(redemption["points"] for redemption in redemptions) == 100
    assert sum(lot["usedPoints"] for lot in lots) == 100
    assert set().union(*(lot["usedWith"] for lot in lots)) == redemption_ids
    assert replay(summary) == 0


async def test_parallel_additions_lose_nothing_and_count_a_running_balance(
    http: httpx.AsyncClient, headers: Headers
) -> None:
    statuses = await asyncio.gather(*(add(http, headers, "c1", 10) for _ in range(30)))

    assert statuses == [201] * 30
    assert await balance_of(http, headers, "c1") == 300
    summary = await summary_of(http, headers, "c1")
    lots = summary["summary"]["addedPointsList"]
    assert len(lots) == 30
    assert len({lot["id"] for lot in lots}) == 30
    assert_in_created_order(lots)
    assert [lot["allPointsAfterCreation"] for lot in lots] == list(range(10, 301, 10))


async def test_mixed_burst_keeps_every_balance_consistent(
    http: httpx.AsyncClient, headers: Headers
) -> None:
    assert await add(http, headers, "c1", 40) == 201
    requests: list[tuple[str, int]] = []
    for index in range(20):
        requests.append(("/addPoints", 5 + index))
        requests.append(("/redeemPoints", 15 + index % 4 * 5))

    responses = await asyncio.gather(
        *(
            http.post(url("c1", action), json={"points": points}, headers=headers)
            for action, points in requests
        )
    )

    added = 40
    redeemed = 0
    for (action, points), response in zip(requests, responses, strict=True):
        if action == "/addPoints":
            assert response.status_code == 201, response.text
            added += points
        else:
            assert response.status_code in (201, 400), response.text
            if response.status_code == 201:
                redeemed += points
    # Some redemptions succeed, and the 400s (if any) left the balance untouched.
    assert redeemed > 0
    assert await balance_of(http, headers, "c1") == added - redeemed
    summary = await summary_of(http, headers, "c1")
    assert summary["activePoints"] == added - redeemed
    assert len(summary["summary"]["addedPointsList"]) == 21
    assert sum(r["points"] for r in summary["summary"]["redeemedPointsList"]) == redeemed
    assert sum(lot["usedPoints"] for lot in summary["summary"]["addedPointsList"]) == redeemed
    assert replay(summary) == added - redeemed


async def test_parallel_writes_for_different_customers_all_land(
    http: httpx.AsyncClient, headers: Headers
) -> None:
    customers = [f"c{index}" for index in range(10)]
    # Each customer's first write races its others: the entry is created exactly once.
    writes = [(customer, index + 1) for index, customer in enumerate(customers) for _ in range(5)]

    statuses = await asyncio.gather(
        *(add(http, headers, customer, points) for customer, points in writes)
    )

    assert statuses == [201] * len(writes)
    summaries = await asyncio.gather(*(summary_of(http, headers, c) for c in customers))
    for index, (customer, summary) in enumerate(zip(customers, summaries, strict=True)):
        expected = 5 * (index + 1)
        assert summary["customerId"] == customer
        assert summary["activePoints"] == expected
        assert len(summary["summary"]["addedPointsList"]) == 5
        assert replay(summary) == expected
        assert await balance_of(http, headers, customer) == expected
    batch = await http.get(f"{BASE}/summaryBatch", headers=headers)
    assert batch.status_code == 200
    assert [entry["customerId"] for entry in batch.json()] == customers
