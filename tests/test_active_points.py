"""The active points each write stores on the account (migration 0006): after every kind of
write they are what the lots add up to, the window they hold for ends no later than the first
expiry among them, and a balance reads them, less the lots that expired since (migration
0013)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from rewardpoints.db import create_engine
from rewardpoints.ledger import Ledger, NewLot, NewRedemption
from rewardpoints.models import accounts, lots

from .conftest import make_settings
from .support import FakeClock


@pytest.fixture
async def ledger(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    settings = make_settings(database_url)
    ledger = Ledger(create_engine(settings, clock=clock), settings.sites())
    yield ledger
    await ledger.engine.dispose()


async def _stored(ledger: Ledger, tenant: str, customer: str) -> Any:
    async with ledger.engine.connect() as conn:
        return (
            await conn.execute(
                select(
                    accounts.c.active_points, accounts.c.active_since, accounts.c.active_until
                ).where(accounts.c.tenant == tenant, accounts.c.customer_id == customer)
            )
        ).one()


async def _lots_at(ledger: Ledger, tenant: str, customer: str, moment: datetime) -> tuple[int, Any]:
    """The active points and the first expiry among them, from the lots themselves."""
    async with ledger.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(lots.c.points - lots.c.used_points, lots.c.valid_until).where(
                    lots.c.tenant == tenant,
                    lots.c.customer_id == customer,
                    lots.c.used_points < lots.c.points,
                    lots.c.valid_until > moment,
                )
            )
        ).all()
    return sum(row[0] for row in rows), min((row[1] for row in rows), default=None)


async def _check(ledger: Ledger, tenant: str, customer: str) -> int:
    points, since, until = await _stored(ledger, tenant, customer)
    actual, first_expiry = await _lots_at(ledger, tenant, customer, since)
    assert points == actual
    assert since < until
    if first_expiry is not None:
        assert until <= first_expiry
    assert await ledger.balance(tenant, customer) == actual
    return int(points)


async def test_every_kind_of_write_stores_what_the_lots_add_up_to(
    ledger: Ledger, clock: FakeClock, tenant: str
) -> None:
    soon = clock.now + timedelta(hours=1)
    await ledger.create_customer(
        tenant, "c", NewLot(50, valid_until=soon + timedelta(days=9)), "main"
    )
    assert await _check(ledger, tenant, "c") == 50
    await ledger.add_points(tenant, "c", NewLot(30, valid_until=soon), "main")
    assert await _check(ledger, tenant, "c") == 80
    assert (await _stored(ledger, tenant, "c"))[2] == soon
    await ledger.redeem_points(tenant, "c", NewRedemption(60))
    assert await _check(ledger, tenant, "c") == 20
    async with ledger.engine.begin() as conn:
        await ledger.charge_back(conn, tenant, "c", 15)
    assert await _check(ledger, tenant, "c") == 35
    await ledger.award_order(tenant, "c", "order-1", 5, "an order", "main")
    assert await _check(ledger, tenant, "c") == 40
    await ledger.redeem_points(tenant, "c", NewRedemption(40))
    assert await _check(ledger, tenant, "c") == 0

    # A customer whose entry was created empty: no lot counts, nothing expires.
    await ledger.create_customer(tenant, "empty", None, "main")
    await ledger.add_points(tenant, "empty", NewLot(3), "main")
    await ledger.redeem_points(tenant, "empty", NewRedemption(3))
    assert await _check(ledger, tenant, "empty") == 0


async def test_a_balance_counts_expiry_and_a_clock_set_back_whatever_was_stored(
    ledger: Ledger, clock: FakeClock, tenant: str
) -> None:
    await ledger.add_points(
        tenant, "c", NewLot(10, valid_until=clock.now + timedelta(hours=1)), "main"
    )
    await ledger.add_points(
        tenant, "c", NewLot(20, valid_until=clock.now + timedelta(days=9)), "main"
    )
    assert await ledger.balance(tenant, "c") == 30
    clock.advance(hours=2)  # the first lot has expired since the last write
    assert await ledger.balance(tenant, "c") == 20
    clock.advance(days=-1)  # before the last write: both lots were valid then
    assert await ledger.balance(tenant, "c") == 30
    clock.advance(days=10)  # both expired
    assert await ledger.balance(tenant, "c") == 0


async def test_a_balance_reads_the_stored_points_less_what_expired_since_their_write(
    pg_url: str, clock: FakeClock, tenant: str
) -> None:
    """The stored points are the balance: inside their window as they are, past it less the
    lots that expired since (read alone), before their write or with none stored the lots."""
    settings = make_settings(pg_url)
    ledger = Ledger(create_engine(settings, clock=clock), settings.sites())
    try:
        await ledger.add_points(
            tenant, "c", NewLot(10, valid_until=clock.now + timedelta(hours=1)), "main"
        )
        await ledger.add_points(tenant, "c", NewLot(20), "main")
        async with ledger.engine.begin() as conn:
            await conn.execute(
                update(accounts)
                .where(accounts.c.tenant == tenant, accounts.c.customer_id == "c")
                .values(active_points=12345)
            )
        assert await ledger.balance(tenant, "c") == 12345  # the stored points, not the lots
        clock.advance(hours=2)
        assert await ledger.balance(tenant, "c") == 12345 - 10  # less the lot that expired
        clock.advance(days=-1)
        assert await ledger.balance(tenant, "c") == 30  # before the write: the lots
        clock.advance(days=1)
        async with ledger.engine.begin() as conn:
            await conn.execute(
                update(accounts)
                .where(accounts.c.tenant == tenant, accounts.c.customer_id == "c")
                .values(active_points=None)
            )
        assert await ledger.balance(tenant, "c") == 20  # none stored: the lots
    finally:
        await ledger.engine.dispose()
