"""summaryBatch exports hold a connection for as long as their clients read, so a process runs at
most ``REWARDPOINTS_SUMMARY_BATCH_EXPORTS`` of them at once: one more waits for a turn as long
as a request waits for a connection, and is then answered 503 (Emporix's shape) before any
byte; the pool stays free for everything else meanwhile. On both databases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app
from rewardpoints.documents import summary_documents

from .conftest import bearer, make_settings, token

BATCH = "/reward-points/summaryBatch"
WAIT = 1.0


@pytest.fixture
async def service(database_url: str, tenant: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """One export at a time, a 1 s wait for a turn; three customers. The application (for its
    ledger, whose export the test holds open) and an HTTP client of it."""
    settings = make_settings(
        database_url, summary_batch_exports=1, database_pool_timeout_seconds=WAIT
    )
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            headers = bearer(token(tenant))
            for customer in ("a", "b", "c"):
                added = await http.post(
                    f"/reward-points/customer/{customer}/addPoints",
                    json={"points": 10},
                    headers=headers,
                )
                assert added.status_code == 201, added.text
            yield application, http
    finally:
        await application.state.ledger.engine.dispose()


def _customers(items: list[bytes]) -> list[str]:
    return [document["customerId"] for document in json.loads(b"[" + b",".join(items) + b"]")]


async def test_an_export_beyond_the_limit_is_refused_after_the_wait_and_nothing_else_is(
    service: tuple[Any, httpx.AsyncClient], tenant: str
) -> None:
    application, http = service
    headers = bearer(token(tenant))
    running = summary_documents(application.state.documents, tenant)
    first = [await anext(running)]
    try:
        started = time.monotonic()
        refused = await http.get(BATCH, headers=headers)
        waited = time.monotonic() - started
        # Everything else still gets its connection meanwhile.
        balance = await http.get("/reward-points/customer/a", headers=headers)
        summary = await http.get("/reward-points/customer/b/summary", headers=headers)
    finally:
        first += [item async for item in running]
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"] == "1"
    body = refused.json()
    assert body["status"] == 503
    assert body["error"] == "Service Unavailable"
    assert body["path"] == "/summaryBatch"
    assert waited >= WAIT * 0.9
    assert balance.status_code == 200
    assert balance.json() == 10
    assert summary.status_code == 200
    assert _customers(first) == ["a", "b", "c"]
    # The turn is free again once the export ended.
    again = await http.get(BATCH, headers=headers)
    assert again.status_code == 200
    assert [document["customerId"] for document in again.json()] == ["a", "b", "c"]


async def test_an_export_waits_for_a_turn_that_frees_in_time(
    service: tuple[Any, httpx.AsyncClient], tenant: str
) -> None:
    application, http = service
    headers = bearer(token(tenant))
    running = summary_documents(application.state.documents, tenant)
    first = [await anext(running)]
    waiting = asyncio.create_task(http.get(BATCH, headers=headers))
    await asyncio.sleep(WAIT / 3)
    assert not waiting.done()
    first += [item async for item in running]
    answer = await waiting
    assert answer.status_code == 200, answer.text
    assert [document["customerId"] for document in answer.json()] == ["a", "b", "c"]
    assert _customers(first) == ["a", "b", "c"]


async def test_an_export_closed_half_way_gives_its_turn_back(
    service: tuple[Any, httpx.AsyncClient], tenant: str
) -> None:
    application, http = service
    headers = bearer(token(tenant))
    running = summary_documents(application.state.documents, tenant)
    await anext(running)
    await running.aclose()
    answer = await http.get(BATCH, headers=headers)
    assert answer.status_code == 200, answer.text
