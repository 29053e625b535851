"""The baselines of GET balance: FastAPI answering a constant integer, nothing else; and the
same with one database round trip.

bench/harness.py serves it with the uvicorn settings `rewardpoints serve` uses (2 workers, no
access log, proxy headers, log level info), so GET balance can be compared with the cost of the
framework and the server alone (`/value`, the target's baseline), and with the least any
endpoint that reads the database once can cost (`/roundtrip`: `SELECT 1` through an asyncpg
pool, a reference).

`/constant/{name}` answers the bytes of a file named in BENCH_CONSTANT_BODIES
(`name=path,name=path`), read once by each worker, as `application/json`: the harness serves the
10-lot and the 100k-lot summaries' own answers this way, so the table shows what sending those
bytes costs this server with nothing computed, the floor of any summary's latency here.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Response

_pool: Any = None
# Read when a worker imports this module, before it serves.
_bodies: dict[str, bytes] = {
    name: Path(path).read_bytes()
    for name, _sep, path in (
        entry.partition("=")
        for entry in os.environ.get("BENCH_CONSTANT_BODIES", "").split(",")
        if entry
    )
}


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


@app.get("/constant/{name}")
async def constant(name: str) -> Response:
    if name not in _bodies:
        raise HTTPException(404)
    return Response(_bodies[name], media_type="application/json")
