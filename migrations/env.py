"""Alembic environment: the migrations run through asyncpg, like the service."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from rewardpoints.config import Settings
from rewardpoints.models import metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    url = config.attributes.get("database_url") or Settings().database_url
    if not url:
        raise SystemExit(
            "REWARDPOINTS_DATABASE_URL is not set: run `rewardpoints migrate`, which starts the"
            " embedded PostgreSQL, or set it to the database to migrate"
        )
    return str(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # As the service connects (db.connect_args): through a pooler in transaction mode, too.
    connect_args = config.attributes.get("connect_args", {})
    engine = create_async_engine(_url(), poolclass=pool.NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
