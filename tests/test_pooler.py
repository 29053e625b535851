"""The service through a real PgBouncer 1.18 in transaction mode (Debian's package), with
fewer server connections than clients, so consecutive transactions of one client run on
different PostgreSQL sessions: every operation works and every ledger invariant holds, with
``REWARDPOINTS_DATABASE_POOLER=transaction``; without it, a clear 503, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from rewardpoints.app import create_app

from .conftest import fresh_database, make_settings, token
from .support import connect, free_port
from .test_orders import order
from .test_redeem_options import option as option_body
from .test_redeem_options import options_url

ROOT = Path(__file__).resolve().parents[1]


def cluster_script() -> ModuleType:
    """scripts/cluster, whose PgBouncer configuration the tests use as they find it."""
    name = "rewardpoints_cluster_script"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(ROOT / "scripts" / "cluster"))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


@contextlib.contextmanager
def pgbouncer(server_url: str, pool_size: int = 2) -> Iterator[tuple[str, Path]]:
    """PgBouncer in transaction mode in front of the database of ``server_url``: its URL, and
    its configuration file (to stop it, ``pgbouncer_down``, and start it again)."""
    cluster = cluster_script()
    server = make_url(server_url)
    directory = Path(tempfile.mkdtemp(prefix="rp-pgbouncer-"))
    directory.chmod(0o755)
    port = free_port()
    ini = cluster.pgbouncer_config(
        directory, port, server.port or 5432, pool_size, database=server.database
    )
    cluster.pgbouncer_up(ini, port)
    try:
        yield server.set(port=port, username="postgres").render_as_string(hide_password=False), ini
    finally:
        cluster.pgbouncer_down(ini)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pooled(pg_server_url: str) -> Iterator[tuple[str, str]]:
    """A fresh database and PgBouncer in front of it: (direct URL, pooled URL)."""
    with fresh_database(pg_server_url) as direct, pgbouncer(direct) as (through, _):
        yield direct, through


@contextlib.asynccontextmanager
async def instance(url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(url, **overrides))
    transport = httpx.ASGITransport(app=app)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://rp") as client,
        ):
            yield client
    finally:
        await app.state.ledger.direct.engine.dispose()
        await app.state.ledger.engine.dispose()


POOLER = {
    "database_pooler": "transaction",
    "summary_batch_connections": 2,
    "summary_batch_range_customers": 3,
    "summary_stream_entries": 5,
    "database_pool_size": 4,
}


async def test_every_operation_through_pgbouncer_in_transaction_mode(
    pooled: tuple[str, str], tenant: str
) -> None:
    """Two service instances, 8 customers, concurrent writes through both (the fast lane's
    coalesced statements, Idempotency-Keys and their advisory locks, orders, the storefront's
    redeem with its outbox, start points, a delete), then every read, summaryBatch on two
    connections sharing a snapshot and streamed summaries among them; the ledger's
    invariants checked in the database afterwards."""
    direct, through = pooled
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    customers = [f"c{n}" for n in range(8)]
    async with instance(through, **POOLER) as one, instance(through, **POOLER) as two:
        option = await one.post(options_url(tenant), json=option_body(points=30), headers=headers)
        assert option.status_code == 200, option.text
        option_id = option.json()[0]["id"]

        async def customer_work(n: int, customer: str) -> None:
            client = (one, two)[n % 2]
            base = f"/reward-points/customer/{customer}"
            created = await client.post(
                base, json={"startPoints": {"points": 100}}, headers=headers
            )
            assert created.status_code == 200, created.text
            for k in range(10):
                added = await client.post(
                    f"{base}/addPoints",
                    json={"points": 10, "id": f"{customer}-a{k}"},
                    headers=headers,
                )
                assert added.status_code == 201, added.text
                again = await (two, one)[n % 2].post(
                    f"{base}/addPoints",
                    json={"points": 10, "id": f"{customer}-a{k}"},
                    headers=headers,
                )
                assert again.status_code in (200, 201), again.text
                spent = await client.post(
                    f"{base}/redeemPoints",
                    json={"points": 7},
                    headers={**headers, "Idempotency-Key": f"{tenant}-{customer}-r{k}"},
                )
                assert spent.status_code == 201, spent.text
                replay = await (two, one)[n % 2].post(
                    f"{base}/redeemPoints",
                    json={"points": 7},
                    headers={**headers, "Idempotency-Key": f"{tenant}-{customer}-r{k}"},
                )
                assert replay.status_code == 201 and replay.content == spent.content
            awarded = await client.post(
                f"{base}/orders", json=order(f"{customer}-o1", amount=40), headers=headers
            )
            assert awarded.status_code == 201, awarded.text
            assert awarded.json()["points"] == 40  # the default site: a point per unit
            shopper = {"Authorization": f"Bearer {token(tenant, customer_id=customer)}"}
            coupon = await client.post(
                "/reward-points/public/customer/redeem", json={"id": option_id}, headers=shopper
            )
            assert coupon.status_code == 200, coupon.text
            assert coupon.json()["code"]

        await asyncio.gather(*(customer_work(n, c) for n, c in enumerate(customers)))
        gone = await two.delete(f"/reward-points/customer/{customers[-1]}", headers=headers)
        assert gone.status_code in (200, 204), gone.text

        # Each customer: 100 + 10 x 10 + 40 - 10 x 7 - 30 = 140.
        for client in (one, two):
            for customer in customers[:-1]:
                balance = await client.get(f"/reward-points/customer/{customer}", headers=headers)
                assert balance.status_code == 200 and balance.json() == 140, balance.text
            missing = await client.get(f"/reward-points/customer/{customers[-1]}", headers=headers)
            assert missing.status_code == 404
        summaries = [
            (await one.get(f"/reward-points/customer/{c}/summary", headers=headers)).json()
            for c in customers[:-1]
        ]
        batch = await two.get("/reward-points/summaryBatch", headers=headers)
        assert batch.status_code == 200, batch.text
        assert batch.json() == summaries
        assert all(len(s["summary"]["addedPointsList"]) == 12 for s in summaries)

    conn = await connect(direct)
    try:
        broken = await conn.fetch(
            "SELECT lo.customer_id, lo.id FROM lots lo WHERE lo.tenant = $1 AND lo.used_points <>"
            " COALESCE((SELECT sum(points) FROM lot_usages u WHERE u.tenant = lo.tenant"
            " AND u.customer_id = lo.customer_id AND u.lot_id = lo.id), 0)",
            tenant,
        )
        assert broken == []
        drawn = await conn.fetch(
            "SELECT re.id FROM redemptions re WHERE re.tenant = $1 AND re.points <>"
            " (SELECT sum(points) FROM lot_usages u WHERE u.tenant = re.tenant"
            " AND u.customer_id = re.customer_id AND u.redemption_id = re.id)",
            tenant,
        )
        assert drawn == []
        pending = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE tenant = $1 AND done_at IS NULL", tenant
        )
        assert pending == 0
        # The server connections were shared: PgBouncer's pool is 2 for 2 x 4 client ones.
        sessions = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'rewardpoints'"
        )
        assert sessions <= 2
    finally:
        await conn.close()


async def test_without_the_pooler_setting_pgbouncer_refuses_and_the_answer_is_503(
    pooled: tuple[str, str], tenant: str
) -> None:
    _, through = pooled
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    async with instance(through) as client:
        for path in ("/reward-points/customer/c1", "/health/ready"):
            answer = await client.get(path, headers=headers)
            assert answer.status_code == 503, answer.text
            assert answer.headers.get("Retry-After")
        added = await client.post(
            "/reward-points/customer/c1/addPoints", json={"points": 1}, headers=headers
        )
        assert added.status_code == 503 and added.json()["status"] == 503


async def test_the_one_statement_requests_go_straight_to_the_primary_beside_the_pooler(
    pooled: tuple[str, str], tenant: str
) -> None:
    """With ``REWARDPOINTS_DATABASE_DIRECT_URL`` the balance reads, additions and redemptions
    run on the primary's own connections (with their prepared statements): they keep working
    while the pooler is down, when everything else answers 503; the rest goes through the
    pooler again once it is back, and sees those writes."""
    direct, _ = pooled
    cluster = cluster_script()
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    base = "/reward-points/customer/c1"
    with pgbouncer(direct) as (through, ini):
        async with instance(through, **POOLER, database_direct_url=direct) as client:
            created = await client.post(base, json={"startPoints": {"points": 50}}, headers=headers)
            assert created.status_code == 200, created.text
            cluster.pgbouncer_down(ini)
            added = await client.post(
                f"{base}/addPoints", json={"points": 30, "id": "a1"}, headers=headers
            )
            assert added.status_code == 201, added.text
            spent = await client.post(
                f"{base}/redeemPoints", json={"points": 20, "id": "r1"}, headers=headers
            )
            assert spent.status_code == 201, spent.text
            balance = await client.get(base, headers=headers)
            assert balance.status_code == 200 and balance.json() == 60, balance.text
            # What goes through the pooler waits for it, as a 503 to retry.
            for path in (f"{base}/summary", "/health/ready"):
                answer = await client.get(path, headers=headers)
                assert answer.status_code == 503, answer.text
                assert answer.headers.get("Retry-After")
            port = make_url(through).port
            assert port is not None
            cluster.pgbouncer_up(ini, port)
            summary = await client.get(f"{base}/summary", headers=headers)
            assert summary.status_code == 200, summary.text
            lots = summary.json()["summary"]["addedPointsList"]
            assert sorted(lot["points"] for lot in lots) == [30, 50]
            assert [r["id"] for r in summary.json()["summary"]["redeemedPointsList"]] == ["r1"]
            ready = await client.get("/health/ready")
            assert ready.status_code == 200, ready.text


async def test_the_primary_beside_the_pooler_unreachable_is_a_503(
    pooled: tuple[str, str], tenant: str
) -> None:
    """A direct URL that answers nothing: the requests that use it, and readiness, are 503s
    with Retry-After, never 500s."""
    _, through = pooled
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    nowhere = make_url(through).set(port=free_port()).render_as_string(hide_password=False)
    async with instance(through, **POOLER, database_direct_url=nowhere) as client:
        answers = [
            await client.get("/reward-points/customer/c1", headers=headers),
            await client.post(
                "/reward-points/customer/c1/addPoints", json={"points": 1}, headers=headers
            ),
            await client.post(
                "/reward-points/customer/c1/redeemPoints", json={"points": 1}, headers=headers
            ),
            await client.get("/health/ready"),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers.get("Retry-After")


def test_migrations_run_through_pgbouncer(pg_server_url: str, tmp_path: Path) -> None:
    """`rewardpoints migrate` with the pooler setting builds the schema through PgBouncer."""
    from .test_cli import COMMAND, clean_env, head_revision, schema_version

    server = make_url(pg_server_url)
    name = f"rp_pooled_{os.getpid()}_{os.urandom(3).hex()}"
    admin = server.set(database="postgres").render_as_string(hide_password=False)
    asyncio.run(_execute(admin, f'CREATE DATABASE "{name}"'))
    direct = server.set(database=name).render_as_string(hide_password=False)
    try:
        with pgbouncer(direct) as (through, _):
            env = clean_env(
                tmp_path,
                REWARDPOINTS_DATABASE_URL=through,
                REWARDPOINTS_DATABASE_POOLER="transaction",
            )
            done = subprocess.run(
                [str(COMMAND), "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        assert schema_version(direct) == [head_revision()]
    finally:
        asyncio.run(_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute(url: str, statement: str) -> None:
    conn = await connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
