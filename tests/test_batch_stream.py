"""summaryBatch over a real server on PostgreSQL, where it streams from ``COPY ... TO STDOUT``:
a client that hangs up half-way, or a database connection killed half-way, costs the service
nothing: no connection is left busy, and the next stream is whole."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .conftest import TEST_SECRET, bearer, token
from .support import (
    BULK_DESCRIPTION,
    bulk_load,
    connect,
    hang_up_after_first_bytes,
    running_server,
    until_no_busy_connection,
)

pytestmark = pytest.mark.slow

CUSTOMERS = 3000  # about 1.3 MB of documents: many COPY chunks and response writes


async def _seed(pg_url: str, tenant: str) -> None:
    conn = await connect(pg_url)
    try:
        await bulk_load(conn, tenant, CUSTOMERS)
    finally:
        await conn.close()


async def _whole_stream(http: httpx.AsyncClient, headers: dict[str, str]) -> list[Any]:
    answer = await http.get("/reward-points/summaryBatch", headers=headers)
    assert answer.status_code == 200
    documents: list[Any] = json.loads(answer.content)
    return documents


@pytest.fixture
async def served(pg_url: str, tenant: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A seeded tenant and a server: its base URL and the tenant's headers."""
    await _seed(pg_url, tenant)
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    with running_server(env) as base:
        yield base, bearer(token(tenant))


async def test_a_client_hanging_up_mid_stream_leaves_no_busy_connection_and_the_next_is_whole(
    pg_url: str, served: tuple[str, dict[str, str]]
) -> None:
    base, headers = served
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        documents = await _whole_stream(http, headers)
        assert len(documents) == CUSTOMERS
        first = documents[0]
        assert first["customerId"] == "c00001"
        assert first["activePoints"] == 160
        lots = first["summary"]["addedPointsList"]
        assert [lot["usedWith"] for lot in lots] == [["r1"], []]
        assert lots[0]["description"] == BULK_DESCRIPTION == 'a lot with \\ and " and ü'

        for _ in range(3):
            head = await asyncio.to_thread(hang_up_after_first_bytes, base, headers)
            assert head.startswith(b"HTTP/1.1 200")
        await until_no_busy_connection(pg_url)
        assert await _whole_stream(http, headers) == documents


async def test_a_database_connection_killed_mid_stream_ends_that_stream_only(
    pg_url: str, served: tuple[str, dict[str, str]]
) -> None:
    base, headers = served
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        expected = await _whole_stream(http, headers)
        async with http.stream("GET", "/reward-points/summaryBatch", headers=headers) as answer:
            assert answer.status_code == 200
            chunks = answer.aiter_raw()
            received = await anext(chunks)
            killer = await connect(pg_url)
            try:
                killed = await killer.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name = 'rewardpoints' AND query LIKE 'COPY%'"
                )
            finally:
                await killer.close()
            assert killed
            with pytest.raises(httpx.HTTPError):
                async for chunk in chunks:
                    received += chunk
        # The stream broke off: it is not a whole JSON array.
        with pytest.raises(json.JSONDecodeError):
            json.loads(received)
        await until_no_busy_connection(pg_url)
        assert await _whole_stream(http, headers) == expected
