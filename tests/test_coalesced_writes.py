"""Redemptions, and additions, waiting at the same moment go to PostgreSQL in one transaction
(Coalesced in direct.py, the functions of migration 0009): each gets the answer it would have
got alone, no point is spent twice, two such transactions never deadlock, and a write the
database refuses fails alone."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from rewardpoints.config import Settings
from rewardpoints.direct import StatementError
from rewardpoints.errors import EntryConflict, InvalidRequest
from rewardpoints.ledger import NewLot, NewRedemption

from .conftest import make_settings


@pytest.fixture
def settings(pg_url: str) -> Settings:
    """PostgreSQL only: SQLite applies one write at a time."""
    return make_settings(pg_url)


def _path(customer: str, action: str = "") -> str:
    return f"/reward-points/customer/{customer}" + (f"/{action}" if action else "")


async def _add(client: httpx.AsyncClient, headers: Any, customer: str, points: int) -> None:
    added = await client.post(
        _path(customer, "addPoints"), json={"points": points}, headers=headers
    )
    assert added.status_code == 201


async def test_redemptions_of_one_customer_sent_together_spend_each_point_once(
    client: httpx.AsyncClient, app: Any, headers: dict[str, str]
) -> None:
    for points in (20, 30):
        await _add(client, headers, "hot", points)
    redemptions = app.state.ledger._redemptions
    statements_before, requests_before = redemptions.statements, redemptions.requests

    answers = await asyncio.gather(
        *(
            client.post(_path("hot", "redeemPoints"), json={"points": 1}, headers=headers)
            for _ in range(120)
        )
    )

    statuses = [answer.status_code for answer in answers]
    assert statuses.count(201) == 50
    assert statuses.count(400) == 70
    for answer in answers:
        if answer.status_code == 400:
            assert "0" in answer.json()["detail"]
    assert (await client.get(_path("hot"), headers=headers)).json() == 0
    summary = (await client.get(_path("hot", "summary"), headers=headers)).json()
    redeemed = summary["summary"]["redeemedPointsList"]
    # A running balance, one point at a time, in the order they were applied.
    assert [entry["allPointsAfterCreation"] for entry in redeemed] == list(range(49, -1, -1))
    assert [lot["usedPoints"] for lot in summary["summary"]["addedPointsList"]] == [20, 30]
    # They were applied by fewer statements than requests.
    assert redemptions.requests - requests_before == 120
    assert redemptions.statements - statements_before < 120 / 4


async def test_redemptions_of_many_customers_sent_together_each_get_their_own_answer(
    client: httpx.AsyncClient, app: Any, headers: dict[str, str]
) -> None:
    """Each customer's outcome is fixed whatever order the transaction applies them in."""
    for number in range(10):
        await _add(client, headers, f"rich{number}", 100)
    await _add(client, headers, "poor", 5)
    await _add(client, headers, "repeat", 10)
    redemptions = app.state.ledger._redemptions
    statements_before = redemptions.statements

    asked: list[tuple[str, dict[str, Any]]] = [
        *((f"rich{number}", {"points": 10 + number}) for number in range(10)),
        ("poor", {"points": 6}),
        ("nobody", {"points": 1}),
        ("repeat", {"id": "r-1", "points": 4}),
        ("repeat", {"id": "r-1", "points": 4}),  # the same entry again: a retry
        ("rich0", {"id": "r-1", "points": 4}),  # another customer's id: a conflict
    ]
    answers = await asyncio.gather(
        *(
            client.post(_path(customer, "redeemPoints"), json=body, headers=headers)
            for customer, body in asked
        )
    )

    statuses = [answer.status_code for answer in answers]
    assert statuses[:10] == [201] * 10
    assert statuses[10:13] == [400, 404, 201]
    assert "6" in answers[10].json()["detail"] and "5" in answers[10].json()["detail"]
    assert answers[11].json()["message"] == "No reward points found for customer nobody"
    # One of the two with id r-1 for "repeat" is applied, the other answers as it did; the
    # same id for rich0 is refused.
    assert statuses[13:] == [201, 409]
    balances = [
        (await client.get(_path(customer), headers=headers)).json()
        for customer in [f"rich{number}" for number in range(10)] + ["poor", "repeat"]
    ]
    assert balances == [100 - 10 - number for number in range(10)] + [5, 6]
    assert redemptions.statements - statements_before < len(asked)


async def test_redemptions_sent_together_lock_their_customers_without_deadlocks(
    client: httpx.AsyncClient, app: Any, headers: dict[str, str]
) -> None:
    """24 clients, each redeeming from the same few customers one request after another in
    random order, keep several transactions of several customers each at the database at
    once: each locks its customers in key order, so none waits for another in a cycle
    (PostgreSQL would break the cycle after deadlock_timeout, failing one of them)."""
    customers = [f"ring{number}" for number in range(6)]
    for customer in customers:
        await _add(client, headers, customer, 1000)
    direct = app.state.ledger._direct
    retries_before = direct.retries
    redemptions = app.state.ledger._redemptions
    # A few redemptions per transaction and four transactions out at once (as with more
    # statements allowed, or requests arriving spread out), rather than all in one or two.
    redemptions.max_batch = 3
    redemptions.max_in_flight = 4
    statements_before = redemptions.statements

    async def one_client(seed: int) -> list[int]:
        order = random.Random(seed)
        statuses = []
        for _ in range(20):
            answer = await client.post(
                _path(order.choice(customers), "redeemPoints"), json={"points": 1}, headers=headers
            )
            statuses.append(answer.status_code)
        return statuses

    answered = await asyncio.gather(*(one_client(seed) for seed in range(24)))

    assert {status for statuses in answered for status in statuses} == {201}
    # None was run again: PostgreSQL broke no deadlock (which it reports as an error after
    # deadlock_timeout, and which the service answers by running the statement again).
    assert direct.retries == retries_before
    # The transactions carried several redemptions each.
    assert redemptions.statements - statements_before < 24 * 20 / 2.5
    balances = [(await client.get(_path(c), headers=headers)).json() for c in customers]
    assert sum(balances) == 6 * 1000 - 24 * 20


async def test_a_redemption_the_database_refuses_fails_alone(
    client: httpx.AsyncClient, app: Any, tenant: str, headers: dict[str, str]
) -> None:
    """A text PostgreSQL cannot store (a NUL character, which the API refuses before it gets
    here) fails the transaction it is sent in; the others in it are then applied one by one."""
    await _add(client, headers, "mixed", 100)
    ledger = app.state.ledger
    statements_before = ledger._redemptions.statements
    asked = [NewRedemption(points=1, description=f"part {number}") for number in range(10)]
    asked.insert(4, NewRedemption(points=1, description="bad \x00 text"))

    results = await asyncio.gather(
        *(ledger.redeem_points(tenant, "mixed", redemption) for redemption in asked),
        return_exceptions=True,
    )

    assert ledger._redemptions.statements - statements_before < len(asked)
    assert isinstance(results[4], StatementError)
    others = results[:4] + results[5:]
    assert all(isinstance(result, str) for result in others), others
    summary = (await client.get(_path("mixed", "summary"), headers=headers)).json()
    stored = {
        entry["id"]: entry["description"] for entry in summary["summary"]["redeemedPointsList"]
    }
    assert stored == {result: f"part {number}" for number, result in enumerate(others)}
    assert (await client.get(_path("mixed"), headers=headers)).json() == 90


async def test_additions_sent_together_keep_a_running_balance(
    client: httpx.AsyncClient, app: Any, headers: dict[str, str]
) -> None:
    """80 additions at once, for one customer not yet known and for ten known ones."""
    for number in range(10):
        await _add(client, headers, f"known{number}", 1)
    additions = app.state.ledger._additions
    statements_before = additions.statements

    asked = ["new"] * 40 + [f"known{number % 10}" for number in range(40)]
    answers = await asyncio.gather(
        *(
            client.post(_path(customer, "addPoints"), json={"points": 2}, headers=headers)
            for customer in asked
        )
    )

    assert [answer.status_code for answer in answers] == [201] * 80
    assert additions.statements - statements_before < 80 / 4
    summary = (await client.get(_path("new", "summary"), headers=headers)).json()
    added = summary["summary"]["addedPointsList"]
    assert [lot["allPointsAfterCreation"] for lot in added] == list(range(2, 81, 2))
    balances = [(await client.get(_path(f"known{n}"), headers=headers)).json() for n in range(10)]
    assert balances == [1 + 4 * 2] * 10


async def test_an_addition_refused_by_the_database_fails_alone(
    client: httpx.AsyncClient, app: Any, tenant: str, headers: dict[str, str]
) -> None:
    """An id already used for another entry, and a validUntil in the past, are refused by
    rewardpoints_add with an error, which rolls back the transaction they are sent in; the
    others in it are then applied one by one."""
    await _add(client, headers, "taken", 1)
    lot_id = (await client.get(_path("taken", "summary"), headers=headers)).json()["summary"][
        "addedPointsList"
    ][0]["id"]
    ledger = app.state.ledger
    statements_before = ledger._additions.statements
    asked = [NewLot(points=5, description=f"part {number}") for number in range(8)]
    asked.insert(2, NewLot(points=5, id=lot_id))
    asked.insert(6, NewLot(points=5, valid_until=datetime(2001, 1, 1, tzinfo=UTC)))

    results = await asyncio.gather(
        *(ledger.add_points(tenant, "fresh", lot, "main") for lot in asked),
        return_exceptions=True,
    )

    assert ledger._additions.statements - statements_before < len(asked)
    assert isinstance(results[2], EntryConflict)
    assert isinstance(results[6], InvalidRequest)
    others = [result for number, result in enumerate(results) if number not in (2, 6)]
    assert all(isinstance(result, str) for result in others), others
    summary = (await client.get(_path("fresh", "summary"), headers=headers)).json()
    stored = {lot["id"]: lot["description"] for lot in summary["summary"]["addedPointsList"]}
    assert stored == {result: f"part {number}" for number, result in enumerate(others)}
    assert (await client.get(_path("fresh"), headers=headers)).json() == 40
