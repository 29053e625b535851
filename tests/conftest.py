"""A real database for the tests: a fresh PostgreSQL database per run, built by the Alembic
migrations. PostgreSQL is required: when it cannot be reached and no throwaway server can be
started, the run fails instead of skipping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from rewardpoints.app import create_app
from rewardpoints.auth import MANAGE_SCOPES, VIEW_SCOPES, mint_token
from rewardpoints.cli import migrate
from rewardpoints.config import Settings

from .coupon_service import FakeCouponService
from .coupon_service import serve as serve_coupons
from .support import FakeClock, start_throwaway_postgres

TEST_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

VIEW = VIEW_SCOPES[0]
MANAGE = MANAGE_SCOPES[0]


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "jwt_secret": TEST_SECRET,
        "lock_timeout_ms": 5000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _pg_reachable(url: str) -> bool:
    import asyncpg

    parsed = make_url(url)
    try:
        conn = await asyncpg.connect(
            host=parsed.host or "127.0.0.1",
            port=parsed.port or 5432,
            user=parsed.username or "postgres",
            password=parsed.password,
            database=parsed.database or "postgres",
            timeout=5,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def _admin(url: str, *statements: str) -> None:
    import asyncpg

    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database=parsed.database or "postgres",
        timeout=10,
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The PostgreSQL server to test against: the configured one, or a throwaway one."""
    url = os.environ.get("REWARDPOINTS_TEST_DATABASE_URL", DEFAULT_PG_URL)
    if asyncio.run(_pg_reachable(url)):
        yield url
        return
    with start_throwaway_postgres() as throwaway_url:
        if not asyncio.run(_pg_reachable(throwaway_url)):
            pytest.fail(f"PostgreSQL unreachable at {url} and no throwaway server could start")
        yield throwaway_url


@contextlib.contextmanager
def fresh_database(pg_server_url: str) -> Iterator[str]:
    """A database of its own on the server, built by the migrations, dropped afterwards."""
    name = f"rp_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_server_url, f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(make_settings(url))
        yield url
    finally:
        asyncio.run(_admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database for this run."""
    with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture
def database_url(pg_url: str) -> str:
    """The database of the service under test."""
    return pg_url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tenant() -> str:
    """A tenant of its own for each test: isolation without truncating anything."""
    return "t" + secrets.token_hex(5)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[Any]:
    application = create_app(settings, clock=clock)
    yield application
    await application.state.ledger.engine.dispose()


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@contextlib.asynccontextmanager
async def served(
    database_url: str, clock: Callable[[], Any] | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a service of its own with these settings, its engine disposed after."""
    application = create_app(make_settings(database_url, **overrides), clock=clock)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
    finally:
        await application.state.ledger.engine.dispose()


@contextlib.asynccontextmanager
async def documents_of(url: str, **overrides: Any) -> AsyncIterator[Any]:
    """The summaries of a service of its own with these settings, its engine disposed after."""
    app = create_app(make_settings(url, **overrides))
    try:
        yield app.state.documents
    finally:
        await app.state.ledger.engine.dispose()


@contextlib.asynccontextmanager
async def ledger_of(url: str, **overrides: Any) -> AsyncIterator[Any]:
    """The ledger of a service of its own with these settings, its engine disposed after."""
    app = create_app(make_settings(url, **overrides))
    try:
        yield app.state.ledger
    finally:
        await app.state.ledger.engine.dispose()


def token(
    tenant: str,
    scopes: tuple[str, ...] | list[str] = (VIEW, MANAGE),
    *,
    customer_id: str | None = None,
    secret: str = TEST_SECRET,
    **kwargs: Any,
) -> str:
    return mint_token(secret, tenant=tenant, scopes=scopes, customer_id=customer_id, **kwargs)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def headers(tenant: str) -> dict[str, str]:
    """View and manage scopes for the test's tenant."""
    return bearer(token(tenant))


@pytest.fixture
def make_headers() -> Callable[..., dict[str, str]]:
    def build(tenant: str, *scopes: str, **kwargs: Any) -> dict[str, str]:
        return bearer(token(tenant, scopes or (VIEW, MANAGE), **kwargs))

    return build


@pytest.fixture(scope="session")
def coupon_service() -> Iterator[FakeCouponService]:
    """A stand-in Coupon Service on loopback, shared by the tests that plan its answers per
    tenant."""
    yield from serve_coupons(FakeCouponService())
