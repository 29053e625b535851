"""The baselines of GET balance: FastAPI answering a constant integer, nothing else; and the
same with one database round trip.

bench/harness.py serves it with the uvicorn settings `rewardpoints serve` uses (2 workers, no
access log, proxy headers, log level info), so GET balance can be compared with the cost of the
framework and the server alone (`/value`, the target's baseline), and with the least any
endpoint that reads the database once can cost (`/roundtrip`: `SELECT 1` through an asyncpg
pool, a reference).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from fastapi import FastAPI

_pool: Any = None


async def _keep(_connection: Any) -> None:
    """Return connections to the pool as they are (asyncpg's default reset is a round trip)."""


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global _pool
    dsn = os.environ.get("BENCH_BASELINE_DSN")
    if dsn:
        _pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10, reset=_keep)
    try:
        yield
    finally:
        if _pool is not None:
            await _pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/value")
async def value() -> int:
    return 42


@app.get("/roundtrip")
async def roundtrip() -> int:
    async with _pool.acquire() as connection:
        return int(await connection.fetchval("SELECT 1"))
