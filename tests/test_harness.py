"""The suite's own promise: with no PostgreSQL reachable it starts a throwaway server."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from rewardpoints.cli import migrate

from .conftest import _pg_reachable, make_settings
from .support import free_port, start_throwaway_postgres


@pytest.mark.slow
def test_throwaway_postgres_starts_and_takes_the_migrations() -> None:
    assert not asyncio.run(
        _pg_reachable(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres")
    )
    with start_throwaway_postgres() as url:
        assert asyncio.run(_pg_reachable(url))
        migrate(make_settings(url))

        async def tables() -> set[str]:
            engine = create_async_engine(url)
            async with engine.connect() as conn:
                names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            await engine.dispose()
            return names

        assert {"accounts", "lots", "redemptions", "lot_usages"} <= asyncio.run(tables())
    assert not asyncio.run(_pg_reachable(url))
