"""Balance reads waiting at the same moment go to PostgreSQL as one statement (Coalesced
in direct.py): each still gets its own customer's balance, never an older one than the writes
acknowledged before it was asked, and a failure or a cancellation touches only what it must."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app
from rewardpoints.config import Settings

from .conftest import make_settings
from .support import FakeClock, free_port


@pytest.fixture
def settings(pg_url: str) -> Settings:
    """PostgreSQL only: SQLite reads one balance at a time."""
    return make_settings(pg_url)


def _path(customer: str) -> str:
    return f"/reward-points/customer/{customer}"


async def test_reads_sent_together_each_get_their_own_customers_balance(
    client: httpx.AsyncClient, app: Any, headers: dict[str, str]
) -> None:
    customers = [f"c{number}" for number in range(40)]
    for number, customer in enumerate(customers):
        added = await client.post(
            _path(customer) + "/addPoints", json={"points": number + 1}, headers=headers
        )
        assert added.status_code == 201
    reads = app.state.ledger.balances
    statements_before, reads_before = reads.statements, reads.requests

    asked = [customers[(7 * i) % 40] for i in range(200)] + ["nobody", "c40", "c 1"]
    answers = await asyncio.gather(*(client.get(_path(c), headers=headers) for c in asked))

    for customer, answer in zip(asked, answers, strict=True):
        if customer in customers:
            assert (answer.status_code, answer.json()) == (200, int(customer[1:]) + 1)
        else:
            assert answer.status_code == 404
            assert answer.json()["message"] == f"No reward points found for customer {customer}"
    # They were answered by fewer statements than reads.
    assert reads.requests - reads_before == len(asked)
    assert reads.statements - statements_before < len(asked) / 4


async def test_a_read_never_sees_less_than_the_writes_acknowledged_before_it(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Reads keep statements in flight all along; after each acknowledged write, reads asked
    for later see it, even when they join reads that were asked for before it."""
    customer = "c-counter"
    await client.post(_path(customer), json={}, headers=headers)
    stop = asyncio.Event()

    async def background_reader() -> None:
        while not stop.is_set():
            await asyncio.gather(*(client.get(_path(customer), headers=headers) for _ in range(8)))

    readers = [asyncio.create_task(background_reader()) for _ in range(3)]
    try:
        for points in range(1, 41):
            added = await client.post(
                _path(customer) + "/addPoints", json={"points": 1}, headers=headers
            )
            assert added.status_code == 201
            seen = await asyncio.gather(
                *(client.get(_path(customer), headers=headers) for _ in range(5))
            )
            assert [answer.json() for answer in seen] == [points] * 5
    finally:
        stop.set()
        await asyncio.gather(*readers)


async def test_a_cancelled_read_leaves_the_others_answered(
    client: httpx.AsyncClient, app: Any, tenant: str, headers: dict[str, str]
) -> None:
    for customer, points in (("a", 3), ("b", 5)):
        await client.post(_path(customer) + "/addPoints", json={"points": points}, headers=headers)
    ledger = app.state.ledger
    reads = ledger.balances
    sent_before = reads.statements
    tasks = [asyncio.create_task(ledger.balance(tenant, customer)) for customer in ["a", "b"] * 10]
    await asyncio.sleep(0)  # queued, not sent yet
    for task in tasks[::3]:
        task.cancel()
    while reads.statements == sent_before:  # sent: now in flight
        await asyncio.sleep(0)
    for task in tasks[1::3]:
        task.cancel()
    async with asyncio.timeout(10):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for number, result in enumerate(results):
        if number % 3 in (0, 1):
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == (3 if number % 2 == 0 else 5)
    # Nothing is left waiting, and the next reads are answered.
    assert ledger.balances._pending == []
    assert (await client.get(_path("b"), headers=headers)).json() == 5


async def test_reads_sent_together_to_an_unreachable_database_are_each_answered_503(
    tenant: str, headers: dict[str, str]
) -> None:
    unreachable = make_settings(
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing",
        database_pool_timeout_seconds=2,
    )
    app = create_app(unreachable, clock=FakeClock())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answers = await asyncio.gather(
            *(client.get(_path(f"c{number}"), headers=headers) for number in range(12))
        )
    await app.state.ledger.engine.dispose()
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["error"] == "Service Unavailable"
