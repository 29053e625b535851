"""Redemptions, and additions, waiting at the same moment go to PostgreSQL in one transaction
(Coalesced in direct.py, the functions of migration 0009): each gets the answer it would have
got alone, no point is spent twice, two such transactions never deadlock, and a write the
database refuses fails alone."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app
from rewardpoints.config import Settings
from rewardpoints.direct import StatementError
from rewardpoints.errors import EntryConflict, InvalidRequest
from rewardpoints.ledger import NewLot, NewRedemption

from .conftest import make_settings
from .support import FakeClock, connect


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
    redemptions = app.state.ledger.redemptions
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
            assert answer.json()["detail"] == "Not enough reward points: requested 1, available 0"
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
    redemptions = app.state.ledger.redemptions
    statements_before = redemptions.statements

    asked: list[tuple[str, dict[str, Any]]] = [
        *((f"rich{number}", {"points": 10 + number}) for number in range(10)),
        ("poor", {"points": 6}),
        ("nobody", {"points": 1}),
        ("repeat", {"id": "r-1", "points": 4}),
        ("repeat", {"id": "r-1", "points": 4}),  # the same entry again: a retry
        ("rich0", {"id": "r-1", "points": 4}),  # another customer's id: an entry of its own
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
    assert answers[10].json()["detail"] == "Not enough reward points: requested 6, available 5"
    assert answers[11].json()["message"] == "No reward points found for customer nobody"
    # One of the two with id r-1 for "repeat" is applied, the other answers as it did; the
    # same id for rich0 is rich0's own entry.
    assert statuses[13:] == [201, 201]
    balances = [
        (await client.get(_path(customer), headers=headers)).json()
        for customer in [f"rich{number}" for number in range(10)] + ["poor", "repeat"]
    ]
    assert balances == [100 - 10 - number - (4 if number == 0 else 0) for number in range(10)] + [
        5,
        6,
    ]
    assert redemptions.statements - statements_before < len(asked)


async def test_transactions_at_once_apply_their_writes_together_without_waiting_in_a_cycle(
    client: httpx.AsyncClient, app: Any, headers: dict[str, str]
) -> None:
    """24 clients, each redeeming from 60 customers one request after another in random order,
    keep several transactions of several customers each at the database at once. Each locks the
    accounts it can lock at once and applies their writes; a write whose customer another one
    holds is sent alone. So none waits for another's locks (PostgreSQL would break a cycle
    after deadlock_timeout, failing one of them to be run again)."""
    customers = [f"ring{number}" for number in range(60)]
    for customer in customers:
        await _add(client, headers, customer, 1000)
    direct = app.state.ledger.direct
    retries_before = direct.retries
    redemptions = app.state.ledger.redemptions
    # A few redemptions per transaction and four transactions out at once (as with more
    # statements allowed, or requests arriving spread out), rather than all in one or two.
    redemptions.max_batch = 3
    redemptions.max_in_flight = 4
    statements_before = redemptions.statements
    requests_before, alone_before = redemptions.requests, redemptions.alone

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
    assert direct.retries == retries_before
    # The transactions carried several redemptions each, and applied most of them: few were
    # left to be sent alone because another transaction held their customer.
    assert redemptions.statements - statements_before < 24 * 20 / 2.5
    assert redemptions.alone - alone_before < (redemptions.requests - requests_before) / 4
    balances = [(await client.get(_path(c), headers=headers)).json() for c in customers]
    assert sum(balances) == 60 * 1000 - 24 * 20


async def test_a_customer_locked_elsewhere_holds_up_only_its_own_writes(
    client: httpx.AsyncClient, app: Any, pg_url: str, tenant: str, headers: dict[str, str]
) -> None:
    """While another session holds one customer's account locked, writes of other customers
    sent together with that customer's are answered; the locked customer's write waits for
    the lock and is applied once it is given back."""
    for customer in ("held", "free0", "free1", "free2"):
        await _add(client, headers, customer, 100)
    holder = await connect(pg_url)
    try:
        locked = holder.transaction()
        await locked.start()
        await holder.execute(
            "SELECT 1 FROM accounts WHERE tenant = $1 AND customer_id = 'held' FOR UPDATE",
            tenant,
        )
        redemptions = app.state.ledger.redemptions
        statements_before = redemptions.statements
        writes = [
            asyncio.create_task(
                client.post(_path(customer, "redeemPoints"), json={"points": 7}, headers=headers)
            )
            for customer in ("free0", "held", "free1", "free2", "held", "free0")
        ]
        free = [writes[number] for number in (0, 2, 3, 5)]
        async with asyncio.timeout(3):  # well within the lock timeout (5 s)
            answers = await asyncio.gather(*free)
        assert [answer.status_code for answer in answers] == [201] * 4
        assert redemptions.statements - statements_before < len(writes)
        assert not writes[1].done() and not writes[4].done()
        await locked.commit()
        held = await asyncio.gather(writes[1], writes[4])
    finally:
        await holder.close()
    assert [answer.status_code for answer in held] == [201, 201]
    balances = [
        (await client.get(_path(customer), headers=headers)).json()
        for customer in ("held", "free0", "free1", "free2")
    ]
    assert balances == [86, 86, 93, 93]


async def test_a_redemption_the_database_refuses_fails_alone(
    client: httpx.AsyncClient, app: Any, tenant: str, headers: dict[str, str]
) -> None:
    """A text PostgreSQL cannot store (a NUL character, which the API refuses before it gets
    here) fails the transaction it is sent in; the others in it are then applied one by one."""
    await _add(client, headers, "mixed", 100)
    ledger = app.state.ledger
    statements_before = ledger.redemptions.statements
    alone_before = ledger.redemptions.alone
    asked = [NewRedemption(points=1, description=f"part {number}") for number in range(10)]
    asked.insert(4, NewRedemption(points=1, description="bad \x00 text"))

    results = await asyncio.gather(
        *(ledger.redeem_points(tenant, "mixed", redemption) for redemption in asked),
        return_exceptions=True,
    )

    assert ledger.redemptions.statements - statements_before < len(asked)
    assert ledger.redemptions.alone - alone_before == len(asked)
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
    """80 additions at once, for one customer not yet known (whose first one creates it) and
    for ten known ones."""
    for number in range(10):
        await _add(client, headers, f"known{number}", 1)
    additions = app.state.ledger.additions
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
    # Each saw the balance the ones applied before it left (their order against createdAt's
    # is the next test's, on the database's clock).
    assert sorted(lot["allPointsAfterCreation"] for lot in added) == list(range(2, 81, 2))
    balances = [(await client.get(_path(f"known{n}"), headers=headers)).json() for n in range(10)]
    assert balances == [1 + 4 * 2] * 10


async def test_additions_refused_are_answered_in_their_transaction(
    client: httpx.AsyncClient, app: Any, clock: FakeClock, tenant: str, headers: dict[str, str]
) -> None:
    """An id already used for another entry, and a validUntil in the past, are refused in the
    transaction they are sent in (rewardpoints_add would raise, rolling back the others), and
    the same entry sent again is a retry; the others are applied with them."""
    await _add(client, headers, "fresh", 60)
    lot_id = (await client.get(_path("fresh", "summary"), headers=headers)).json()["summary"][
        "addedPointsList"
    ][0]["id"]
    again = NewLot(points=5, id="once", valid_until=datetime.now(UTC) + timedelta(days=1))
    ledger = app.state.ledger
    await ledger.add_points(tenant, "fresh", again, "main")
    clock.advance(days=2)  # "once" is a retry even with its validUntil passed
    additions = ledger.additions
    statements_before, alone_before = additions.statements, additions.alone
    asked = [NewLot(points=5, description=f"part {number}") for number in range(8)]
    asked.insert(2, NewLot(points=5, id=lot_id))
    asked.insert(6, NewLot(points=5, valid_until=datetime(2001, 1, 1, tzinfo=UTC)))
    asked.insert(8, again)

    results = await asyncio.gather(
        *(ledger.add_points(tenant, "fresh", lot, "main") for lot in asked),
        return_exceptions=True,
    )

    assert additions.statements - statements_before == 1
    assert additions.alone == alone_before
    assert isinstance(results[2], EntryConflict)
    assert isinstance(results[6], InvalidRequest)
    assert results[8] == "once"
    others = [result for number, result in enumerate(results) if number not in (2, 6, 8)]
    assert all(isinstance(result, str) for result in others), others
    summary = (await client.get(_path("fresh", "summary"), headers=headers)).json()
    stored = {lot["id"]: lot["description"] for lot in summary["summary"]["addedPointsList"][2:]}
    assert stored == {result: f"part {number}" for number, result in enumerate(others)}
    # The 5 points of "once" have expired meanwhile.
    assert (await client.get(_path("fresh"), headers=headers)).json() == 60 + 8 * 5


async def test_writes_sent_together_on_the_databases_clock_keep_their_order(
    pg_url: str, headers: dict[str, str]
) -> None:
    """With the real clock (the database reads it under the customer's lock), additions sent
    together, then redemptions sent together, are listed in the order they were applied:
    allPointsAfterCreation is the running balance in the summary's createdAt order."""
    application = create_app(make_settings(pg_url))
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for action, points, count in (("addPoints", 2, 45), ("redeemPoints", 1, 60)):
                answers = await asyncio.gather(
                    *(
                        http.post(
                            _path("clocked", action), json={"points": points}, headers=headers
                        )
                        for _ in range(count)
                    )
                )
                assert [answer.status_code for answer in answers] == [201] * count
            summary = (await http.get(_path("clocked", "summary"), headers=headers)).json()
        ledger = application.state.ledger
        assert ledger.additions.statements < 45 / 4
        assert ledger.redemptions.statements < 60 / 4
    finally:
        await application.state.ledger.engine.dispose()
    added = summary["summary"]["addedPointsList"]
    redeemed = summary["summary"]["redeemedPointsList"]
    assert [lot["allPointsAfterCreation"] for lot in added] == list(range(2, 91, 2))
    assert [entry["allPointsAfterCreation"] for entry in redeemed] == list(range(89, 29, -1))
    assert redeemed[0]["createdAt"] >= added[-1]["createdAt"]
