"""PostgreSQL's fast path (direct.py): pooled connections the server closed are replaced without
a failed request, writes of one customer queue in the worker for at most the lock timeout, and
more statements at once than the pool's base size wait for its connections instead of opening
(and closing) overflow connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from rewardpoints.app import create_app
from rewardpoints.config import Settings
from rewardpoints.db import MAX_ATTEMPTS
from rewardpoints.direct import KeyedGate
from rewardpoints.errors import DatabaseUnavailable

from .conftest import make_settings, served
from .support import hang_up_holding_proxy


@pytest.fixture
def settings(pg_url: str) -> Settings:
    """PostgreSQL only (conftest's app and client use these), with a short lock timeout."""
    return make_settings(pg_url, lock_timeout_ms=300)


async def _terminate_backends_of(pg_url: str, pids: list[int]) -> int:
    url = make_url(pg_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        rows = await conn.fetch(
            "SELECT pid FROM unnest($1::int[]) AS pid WHERE pg_terminate_backend(pid)", pids
        )
        return len(rows)
    finally:
        await conn.close()


async def _terminate_backends_at(pg_url: str, client_ports: list[int]) -> int:
    """Terminate the backends whose clients connected from ``client_ports`` on loopback."""
    url = make_url(pg_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        rows = await conn.fetch(
            "WITH targets AS MATERIALIZED (SELECT pid FROM pg_stat_activity"
            " WHERE client_port = ANY($1::int[]) AND datname = current_database())"
            " SELECT pid FROM targets WHERE pg_terminate_backend(pid)",
            client_ports,
        )
        return len(rows)
    finally:
        await conn.close()


async def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def _pooled_backend_pids(client: httpx.AsyncClient, app: Any, headers: Any) -> list[int]:
    """Open several pooled connections at once and return their server process ids."""
    engine = app.state.ledger.engine
    pids: list[int] = []

    async def one() -> None:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pids.append(raw.driver_connection.get_server_pid())
            await asyncio.sleep(0.05)  # overlap, so the pool opens several

    await asyncio.gather(*(one() for _ in range(4)))
    return sorted(set(pids))


async def test_idle_connections_the_server_closed_are_replaced_without_a_failed_request(
    client: httpx.AsyncClient, app: Any, pg_url: str, tenant: str, headers: Any
) -> None:
    customer = "c-closed"
    created = await client.post(
        f"/reward-points/customer/{customer}/addPoints", json={"points": 7}, headers=headers
    )
    assert created.status_code == 201
    pids = await _pooled_backend_pids(client, app, headers)
    assert len(pids) >= 2
    assert await _terminate_backends_of(pg_url, pids) == len(pids)
    await asyncio.sleep(0.3)  # the servers' goodbyes arrive while the connections sit idle

    # Every idle connection of the pool is dead now: each request still succeeds.
    answers = await asyncio.gather(
        *(client.get(f"/reward-points/customer/{customer}", headers=headers) for _ in range(6)),
        client.post(
            f"/reward-points/customer/{customer}/redeemPoints",
            json={"points": 2},
            headers=headers,
        ),
        client.post(
            f"/reward-points/customer/{customer}/addPoints", json={"points": 1}, headers=headers
        ),
    )
    assert [answer.status_code for answer in answers] == [200] * 6 + [201, 201]
    balance = await client.get(f"/reward-points/customer/{customer}", headers=headers)
    assert balance.json() == 7 - 2 + 1
    assert not set(await _pooled_backend_pids(client, app, headers)) & set(pids)


# A request per way a statement reaches the database: the fast path's balance read, addition
# and redemption (direct.py), and a command in a transaction of its own (db.run_transaction);
# each with its answer and the customer's balance after it.
FIRST_REQUESTS = {
    "balance": ("GET", "/reward-points/customer/c-goodbye", None, 200, 10),
    "addPoints": ("POST", "/reward-points/customer/c-goodbye/addPoints", {"points": 5}, 201, 15),
    "redeemPoints": (
        "POST",
        "/reward-points/customer/c-goodbye/redeemPoints",
        {"points": 4},
        201,
        6,
    ),
    "new entry": ("POST", "/reward-points/customer/c-new", None, 200, 10),
}


@pytest.mark.parametrize("kind", list(FIRST_REQUESTS))
async def test_a_pooled_connection_whose_server_said_goodbye_but_not_hung_up_costs_no_request(
    pg_url: str, tenant: str, headers: Any, kind: str
) -> None:
    """The server ends the pool's idle connection: its goodbye arrives, the connection's end
    not yet (held back by a proxy, as a client's event loop holds it back for a moment when
    it reads the two apart). The driver still calls that connection open, so the pool hands
    it out; the statement it then refuses to send is sent again on another connection."""
    method, path, body, status, balance = FIRST_REQUESTS[kind]
    async with contextlib.AsyncExitStack() as stack:
        proxied_url, proxy = await stack.enter_async_context(hang_up_holding_proxy(pg_url))
        http = await stack.enter_async_context(served(proxied_url, database_pool_size=1))
        funded = await http.post(
            "/reward-points/customer/c-goodbye/addPoints", json={"points": 10}, headers=headers
        )
        assert funded.status_code == 201
        ports = set(proxy.server_side_ports)
        assert ports, "no connection went through the proxy"
        proxy.hold_hang_ups(ports)
        assert await _terminate_backends_at(pg_url, sorted(ports)) == len(ports)
        await _eventually(lambda: ports <= proxy.hung_up)

        answer = await http.request(method, path, json=body, headers=headers)

        assert answer.status_code == status, answer.text
        after = await http.get("/reward-points/customer/c-goodbye", headers=headers)
        assert after.json() == balance
        if kind == "new entry":
            exists = await http.get("/reward-points/customer/c-new", headers=headers)
            assert exists.json() == 0


async def test_a_read_that_finds_only_broken_connections_answers_503_and_they_are_gone_after(
    pg_url: str, tenant: str, headers: Any
) -> None:
    """One idle connection more than a statement's attempts, each of them told goodbye by its
    server without being hung up (as above): a read refused by every connection it tries
    answers 503 with Retry-After, never 500; the next read gets the last broken one, then a
    new connection, and is served."""
    broken = MAX_ATTEMPTS + 1
    async with contextlib.AsyncExitStack() as stack:
        proxied_url, proxy = await stack.enter_async_context(hang_up_holding_proxy(pg_url))
        application = create_app(make_settings(proxied_url, database_pool_size=broken))
        engine = application.state.ledger.engine
        stack.push_async_callback(engine.dispose)
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=application), base_url="http://testserver"
            )
        )
        path = "/reward-points/customer/c-broken"
        assert (
            await http.post(f"{path}/addPoints", json={"points": 3}, headers=headers)
        ).status_code == 201

        async def hold_a_connection() -> None:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
                await asyncio.sleep(0.05)  # overlap, so the pool opens them all

        await asyncio.gather(*(hold_a_connection() for _ in range(broken)))
        ports = set(proxy.server_side_ports)
        assert len(ports) == broken
        proxy.hold_hang_ups(ports)
        assert await _terminate_backends_at(pg_url, sorted(ports)) == broken
        await _eventually(lambda: ports <= proxy.hung_up)

        refused = await http.get(path, headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "Service Unavailable"
        served_now = await http.get(path, headers=headers)
        assert (served_now.status_code, served_now.json()) == (200, 3)
        await _eventually(lambda: not ports & proxy.server_side_ports)  # all of them closed


async def test_a_write_waits_for_the_customers_turn_at_most_the_lock_timeout(
    client: httpx.AsyncClient, app: Any, tenant: str, headers: Any
) -> None:
    customer = "c-queued"
    path = f"/reward-points/customer/{customer}"
    assert (
        await client.post(f"{path}/addPoints", json={"points": 10}, headers=headers)
    ).status_code == 201
    gate = app.state.ledger.direct.gate

    async with contextlib.AsyncExitStack() as stack:
        for _ in range(gate.capacity):  # every turn of the customer taken
            await stack.enter_async_context(gate.hold((tenant, customer)))
        started = asyncio.get_running_loop().time()
        refused = await client.post(f"{path}/redeemPoints", json={"points": 3}, headers=headers)
        waited = asyncio.get_running_loop().time() - started
        # Another customer's writes do not wait.
        other = await client.post(
            "/reward-points/customer/c-other/addPoints", json={"points": 1}, headers=headers
        )
    assert refused.status_code == 503
    assert refused.json()["status"] == 503
    assert 0.25 <= waited < 3
    assert other.status_code == 201
    # Refused before it reached the database: nothing was spent.
    assert (await client.get(path, headers=headers)).json() == 10
    assert len(gate) == 0

    # Queued writes of one customer all run, a few at a time, and leave no gate behind.
    answers = await asyncio.gather(
        *(
            client.post(f"{path}/redeemPoints", json={"points": 1}, headers=headers)
            for _ in range(10)
        )
    )
    assert [answer.status_code for answer in answers] == [201] * 10
    assert (await client.get(path, headers=headers)).json() == 0
    assert len(gate) == 0


async def test_a_cancelled_or_timed_out_wait_for_a_customers_turn_leaves_nothing_behind() -> None:
    gate = KeyedGate(timeout=0.2, capacity=1)
    order: list[str] = []

    async def write(name: str, hold: float) -> None:
        async with gate.hold("customer"):
            order.append(name)
            await asyncio.sleep(hold)

    first = asyncio.create_task(write("first", 0.1))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(write("cancelled", 0))
    second = asyncio.create_task(write("second", 0))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.gather(first, second)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert order == ["first", "second"]
    assert len(gate) == 0

    async with gate.hold("customer"):
        with pytest.raises(DatabaseUnavailable):
            await write("late", 0)
    assert len(gate) == 0


async def test_a_customers_turns_are_capacity_many_at_once_in_arrival_order() -> None:
    gate = KeyedGate(timeout=5, capacity=2)
    inside = 0
    most_inside = 0
    order: list[int] = []

    async def write(number: int) -> None:
        nonlocal inside, most_inside
        async with gate.hold("customer"):
            inside += 1
            most_inside = max(most_inside, inside)
            order.append(number)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(write(number) for number in range(8)))
    assert most_inside == 2
    assert order == list(range(8))
    assert len(gate) == 0


async def test_more_writes_at_once_than_the_pool_holds_reuse_its_connections(
    pg_url: str, tenant: str, headers: Any
) -> None:
    """40 writes at once, 10 rounds, on a pool of 2: they take turns on the pool's two
    connections. Past its base size the pool would open a connection for each of them and close
    it when it came back (a PostgreSQL backend started and ended per request)."""
    opened: list[object] = []
    customers = [f"c-pool-{index}" for index in range(20)]
    application = create_app(make_settings(pg_url, database_pool_size=2))
    engine = application.state.ledger.engine
    transport = httpx.ASGITransport(app=application)
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(engine.dispose)
        http = await cleanup.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://testserver")
        )
        assert (engine.pool.size(), engine.pool._max_overflow) == (2, 2)

        @event.listens_for(engine.sync_engine, "connect")
        def _count(dbapi_connection: Any, _record: Any) -> None:
            opened.append(dbapi_connection)

        for _ in range(10):
            answers = await asyncio.gather(
                *(
                    http.post(
                        f"/reward-points/customer/{customer}/addPoints",
                        json={"points": 3},
                        headers=headers,
                    )
                    for customer in customers
                ),
                *(
                    http.post(
                        f"/reward-points/customer/{customer}/redeemPoints",
                        json={"points": 1},
                        headers=headers,
                    )
                    for customer in customers
                ),
            )
            # A redemption may come before the customer's first points: 404, or 400 if
            # the balance is short; everything else is served.
            assert {answer.status_code for answer in answers} <= {201, 400, 404}
            assert [answer.status_code for answer in answers[:20]] == [201] * 20
        balances = [
            (await http.get(f"/reward-points/customer/{customer}", headers=headers)).json()
            for customer in customers
        ]
        redeemed = 0
        for customer in customers:
            summary = await http.get(f"/reward-points/customer/{customer}/summary", headers=headers)
            redeemed += sum(r["points"] for r in summary.json()["summary"]["redeemedPointsList"])
    assert sum(balances) == 20 * 10 * 3 - redeemed
    assert redeemed > 0
    assert len(opened) <= 2, f"{len(opened)} connections opened for a pool of 2"
