"""On PostgreSQL the summary of a long history is streamed as it is read (documents.py): the same
bytes as a summary built whole, the customer as of one moment, and the worker's memory does not
grow with the history."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardpoints import documents
from rewardpoints.app import create_app
from rewardpoints.documents import _streamed_document, summary_document
from rewardpoints.errors import CustomerNotFound

from .conftest import TEST_SECRET, bearer, documents_of, make_settings, served, token
from .support import (
    FakeClock,
    busy_connections,
    hang_up_after_first_bytes,
    load_long_history,
    server_process,
    stall,
    until_no_busy_connection,
)

# Bytewise awkward: COPY doubles a backslash, JSON escapes a quote and a control character.
AWKWARD = 'back\\slash "quoted" tab\t ü € \u2028'


async def _seed(http: httpx.AsyncClient, headers: dict[str, str], clock: FakeClock) -> None:
    """Customer "spender": 2 lots, 3 redemptions, one spanning both lots (usedWith lists);
    "saver": 2 lots and no redemption; "empty": nothing."""
    created = await http.post(
        "/reward-points/customer/empty", json={"customerId": "empty"}, headers=headers
    )
    assert created.status_code == 200, created.text
    for customer in ("spender", "saver"):
        for points in (10, 40):
            added = await http.post(
                f"/reward-points/customer/{customer}/addPoints",
                json={"points": points, "description": AWKWARD, "reference-id": AWKWARD},
                headers=headers,
            )
            assert added.status_code == 201, added.text
            clock.advance(seconds=1)
    # Ids in the reverse of their order, so that a list ordered by id is caught.
    for points, spent_id in ((15, "z-first"), (22, "m-second"), (1, "a-third")):
        spent = await http.post(
            "/reward-points/customer/spender/redeemPoints",
            json={"points": points, "description": AWKWARD, "id": spent_id},
            headers=headers,
        )
        assert spent.status_code == 201, spent.text
        clock.advance(seconds=1)


async def _summaries(http: httpx.AsyncClient, tenant: str) -> dict[str, httpx.Response]:
    answers = {}
    for customer in ("spender", "saver", "empty"):
        path = f"/reward-points/customer/{customer}/summary"
        answers[customer] = await http.get(path, headers=bearer(token(tenant)))
        own = bearer(token(tenant, (), customer_id=customer))
        answers[f"public {customer}"] = await http.get(
            "/reward-points/public/customer/summary", headers=own
        )
    return answers


@pytest.mark.parametrize("stream_entries", [0, 2, 3])
async def test_a_streamed_summary_is_the_same_bytes_as_one_built_whole(
    pg_url: str, tenant: str, stream_entries: int
) -> None:
    """A customer with more lots, or more redemptions, than the limit is streamed: with 0 both
    "spender" and "saver", with 2 "spender" only (for its 3 redemptions), with 3 neither."""
    clock = FakeClock()
    headers = bearer(token(tenant))
    async with served(pg_url, clock) as http:
        await _seed(http, headers, clock)
        whole = await _summaries(http, tenant)
    spender = json.loads(whole["spender"].content)
    assert [lot["usedWith"] for lot in spender["summary"]["addedPointsList"]] == [
        ["z-first"],
        ["z-first", "m-second", "a-third"],
    ]
    assert spender["summary"]["addedPointsList"][0]["description"] == AWKWARD
    async with served(pg_url, clock, summary_stream_entries=stream_entries) as http:
        answers = await _summaries(http, tenant)
    longest_list = {"spender": 3, "saver": 2, "empty": 0}
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        assert answer.content == whole[name].content, name
        assert answer.headers["content-type"] == "application/json"
        streamed = longest_list[name.removeprefix("public ")] > stream_entries
        # A response built whole says its length; a streamed one is sent in chunks.
        assert ("content-length" not in answer.headers) == streamed, (name, answer.headers)


async def test_a_streamed_summary_of_a_missing_customer_is_a_404(pg_url: str, tenant: str) -> None:
    async with served(pg_url, summary_stream_entries=0) as http:
        answer = await http.get(
            "/reward-points/customer/nobody/summary", headers=bearer(token(tenant))
        )
    assert answer.status_code == 404
    assert answer.json()["message"] == "No reward points found for customer nobody"


async def test_a_customer_deleted_before_its_stream_begins_is_not_found(
    pg_url: str, tenant: str
) -> None:
    """Counted as long, then erased before the stream's own snapshot: a 404, not a broken 200."""
    async with documents_of(pg_url) as docs:
        parts = _streamed_document(docs.engine, tenant, "erased")
        with pytest.raises(CustomerNotFound):
            await anext(parts)


async def test_a_summary_closed_half_way_gives_its_connection_up_at_once(
    pg_url: str, tenant: str
) -> None:
    """What the response does when its client goes away: by the time closing the summary has
    returned, its connection is no longer checked out (and the next summary gets one)."""
    await load_long_history(pg_url, tenant, lots=12_000, used=2_000)
    async with documents_of(pg_url, summary_stream_entries=100) as docs:
        parts = summary_document(docs, tenant, "long")
        await anext(parts)
        await anext(parts)
        assert docs.engine.pool.checkedout() == 1
        await parts.aclose()
        assert docs.engine.pool.checkedout() == 0
        again = b"".join([part async for part in summary_document(docs, tenant, "long")])
    assert len(json.loads(again)["summary"]["addedPointsList"]) == 12_000


def _points_agree(document: dict[str, Any]) -> None:
    lots = document["summary"]["addedPointsList"]
    redemptions = document["summary"]["redeemedPointsList"]
    assert sum(lot["usedPoints"] for lot in lots) == sum(r["points"] for r in redemptions)
    assert document["activePoints"] == sum(lot["points"] - lot["usedPoints"] for lot in lots)
    used_with = {r for lot in lots for r in lot["usedWith"]}
    assert used_with == {r["id"] for r in redemptions}


async def test_a_streamed_summary_is_the_customer_as_of_one_moment(
    pg_url: str, tenant: str
) -> None:
    """Points are redeemed while the lots are being sent: the summary shows neither the
    redemption nor its lots' new usedPoints, and a summary read after shows both."""
    await load_long_history(pg_url, tenant, lots=12_000, used=2_000)
    headers = bearer(token(tenant))
    application = create_app(make_settings(pg_url, summary_stream_entries=100))
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            parts = summary_document(application.state.documents, tenant, "long")
            received = [await anext(parts), await anext(parts)]
            assert bytes(received[0]).startswith(b'{"customerId":"long","activePoints":100000,')
            # The lots' rows are ~3 MB, more than is read ahead: the COPY of the lots is under
            # way and that of the redemptions has not begun.
            redeemed = await http.post(
                "/reward-points/customer/long/redeemPoints",
                json={"points": 25, "id": "during"},
                headers=headers,
            )
            assert redeemed.status_code == 201, redeemed.text
            received += [part async for part in parts]
            after = await http.get("/reward-points/customer/long/summary", headers=headers)
    finally:
        await application.state.ledger.engine.dispose()
    document = json.loads(b"".join(received))
    assert len(document["summary"]["addedPointsList"]) == 12_000
    assert "during" not in {r["id"] for r in document["summary"]["redeemedPointsList"]}
    _points_agree(document)
    assert after.status_code == 200, after.text
    later = json.loads(after.content)
    assert "during" in {r["id"] for r in later["summary"]["redeemedPointsList"]}
    _points_agree(later)
    assert later["activePoints"] == document["activePoints"] - 25


def _high_water_mark_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
async def test_the_worker_memory_does_not_grow_with_the_history(pg_url: str, tenant: str) -> None:
    """60,000 lots, ~15 MB of JSON: built whole, the worker's peak memory grew by about three
    times that (the text, its bytes, the driver's buffer); streamed, by little."""
    await load_long_history(pg_url, tenant, lots=60_000, used=50_000)
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    headers = bearer(token(tenant))
    with server_process(env) as server:  # one worker: the server process serves
        pid = server.pid
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            warm = await http.get("/reward-points/customer/nobody/summary", headers=headers)
            assert warm.status_code == 404
            before = _high_water_mark_kb(pid)
            size = 0
            async with http.stream(
                "GET", "/reward-points/customer/long/summary", headers=headers
            ) as answer:
                assert answer.status_code == 200
                body = bytearray()
                # A client slower than PostgreSQL (~5 MB/s): what is read ahead for it is
                # bounded, not the rest of the history.
                async for chunk in answer.aiter_bytes(512 * 1024):
                    body += chunk
                    size += len(chunk)
                    await asyncio.sleep(0.1)
            grown = _high_water_mark_kb(pid) - before
    document = json.loads(body)
    assert len(document["summary"]["addedPointsList"]) == 60_000
    assert len(document["summary"]["redeemedPointsList"]) == 5_000
    _points_agree(document)
    assert size > 14_000_000
    assert grown < 8_000, f"peak memory grew by {grown} kB for a {size:,}-byte summary"


@pytest.mark.slow
async def test_a_client_hanging_up_mid_summary_leaves_no_busy_connection(
    pg_url: str, tenant: str
) -> None:
    await load_long_history(pg_url, tenant, lots=20_000, used=10_000)
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    headers = bearer(token(tenant))
    path = "/reward-points/customer/long/summary"
    with server_process(env) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            whole = await http.get(path, headers=headers)
            assert whole.status_code == 200
            assert "content-length" not in whole.headers
            for _ in range(3):
                head = await asyncio.to_thread(
                    hang_up_after_first_bytes, server.base, headers, path
                )
                assert head.startswith(b"HTTP/1.1 200")
            await until_no_busy_connection(pg_url)
            again = await http.get(path, headers=headers)
    assert again.status_code == 200
    assert again.content == whole.content
    assert len(json.loads(again.content)["summary"]["addedPointsList"]) == 20_000


async def test_a_long_summary_finding_every_stream_taken_waits_for_one(
    pg_url: str, tenant: str
) -> None:
    """With one stream per process, a second long summary while the first is being sent waits
    for the stream rather than being built whole (which costs the worker memory in proportion
    to the history), and is streamed once the first has ended: the same bytes. A short summary
    needs no stream and is answered meanwhile."""
    await load_long_history(pg_url, tenant, lots=2_000, used=500)
    headers = bearer(token(tenant))
    path = "/reward-points/customer/long/summary"
    settings = make_settings(pg_url, summary_stream_entries=100, summary_streams=1)
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            added = await http.post(
                "/reward-points/customer/short/addPoints", json={"points": 5}, headers=headers
            )
            assert added.status_code == 201, added.text
            parts = summary_document(application.state.documents, tenant, "long")
            received = [await anext(parts), await anext(parts)]
            waiting = asyncio.create_task(http.get(path, headers=headers))
            short = await http.get("/reward-points/customer/short/summary", headers=headers)
            await asyncio.sleep(0.5)
            assert not waiting.done()
            received += [part async for part in parts]
            after = await waiting
    finally:
        await application.state.ledger.engine.dispose()
    assert len(received) > 2  # the first was streamed
    assert short.status_code == 200, short.text
    assert short.json()["activePoints"] == 5
    assert after.status_code == 200, after.text
    assert "content-length" not in after.headers  # streamed too
    assert after.content == b"".join(received)
    assert len(json.loads(after.content)["summary"]["addedPointsList"]) == 2_000


async def test_a_long_summary_finding_no_stream_free_in_time_is_a_503_with_retry_after(
    pg_url: str, tenant: str
) -> None:
    """The wait is as long as for a database connection; then the answer is the 503 of a busy
    database (Emporix's shape, ``Retry-After``), and the stream is free again afterwards."""
    await load_long_history(pg_url, tenant, lots=2_000, used=500)
    headers = bearer(token(tenant))
    path = "/reward-points/customer/long/summary"
    settings = make_settings(
        pg_url, summary_stream_entries=100, summary_streams=1, database_pool_timeout_seconds=1
    )
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            parts = summary_document(application.state.documents, tenant, "long")
            received = [await anext(parts), await anext(parts)]
            started = time.monotonic()
            refused = await http.get(path, headers=headers)
            waited = time.monotonic() - started
            own = bearer(token(tenant, (), customer_id="long"))
            refused_own = await http.get("/reward-points/public/customer/summary", headers=own)
            received += [part async for part in parts]
            after = await http.get(path, headers=headers)
    finally:
        await application.state.ledger.engine.dispose()
    for answer in (refused, refused_own):
        assert answer.status_code == 503, answer.text[:200]
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"] == "Service Unavailable"
    assert waited >= 0.9
    assert after.status_code == 200, after.text
    assert after.content == b"".join(received)


@pytest.mark.slow
async def test_customers_who_stop_reading_their_summaries_do_not_hold_the_pool(
    pg_url: str, tenant: str
) -> None:
    """A customer's app asks for its long summary and stops reading: streamed, it holds a
    connection (and, with one stream per process, the stream) until the send timeout. Three
    more ask meanwhile: they wait for the stream without a connection, then get a 503. Had they
    held one while waiting, the pool (2, +2 overflow) would be taken, and the balances asked for
    meanwhile would wait up to the pool's timeout (8 s)."""
    await load_long_history(pg_url, tenant, lots=30_000, used=10_000)
    env = {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_DATABASE_POOL_SIZE": "2",
        "REWARDPOINTS_DATABASE_POOL_TIMEOUT_SECONDS": "8",
        "REWARDPOINTS_SUMMARY_STREAMS": "1",
    }
    own = bearer(token(tenant, (), customer_id="long"))
    path = "/reward-points/public/customer/summary"
    balances: list[tuple[int, float]] = []
    with server_process(env) as server:
        sock, _ = await asyncio.to_thread(stall, server.base, own, path)
        try:
            async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
                waiting = [asyncio.create_task(http.get(path, headers=own)) for _ in range(3)]
                while not all(task.done() for task in waiting):
                    started = time.monotonic()
                    balance = await http.get(
                        "/reward-points/customer/long", headers=bearer(token(tenant))
                    )
                    balances.append((balance.status_code, time.monotonic() - started))
                    await asyncio.sleep(0.1)
                refused = await asyncio.gather(*waiting)
                assert len(await busy_connections(pg_url)) == 1  # the stream's
        finally:
            sock.close()
        await until_no_busy_connection(pg_url)
    for answer in refused:
        assert answer.status_code == 503, answer.text[:200]
        assert answer.headers["retry-after"] == "1"
    assert len(balances) > 10
    assert {status for status, _ in balances} == {200}
    assert max(seconds for _, seconds in balances) < 2


@pytest.mark.parametrize(
    "path", ["/reward-points/summaryBatch", "/reward-points/customer/long/summary"]
)
async def test_a_connection_lost_before_a_stream_begins_is_a_503_and_nothing_is_left(
    pg_url: str,
    tenant: str,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server goes away (a restart, a failover) between the stream's checkout and its first
    statement: the answer is the 503 of an unreachable database, not a 500."""
    await load_long_history(pg_url, tenant, lots=2_000, used=500)
    headers = bearer(token(tenant))
    application = create_app(make_settings(pg_url, summary_stream_entries=100))
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    lose = "SELECT pg_terminate_backend(pg_backend_pid())"
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            with monkeypatch.context() as patch:
                for settings in ("_EXPORT_SETTINGS", "_STREAM_SETTINGS"):  # summaryBatch, summary
                    patch.setattr(documents, settings, (lose, *getattr(documents, settings)))
                answer = await http.get(path, headers=headers)
            again = await http.get(path, headers=headers)
    finally:
        await application.state.ledger.engine.dispose()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "Service Unavailable"
    assert "unexpected error" not in caplog.text
    await until_no_busy_connection(pg_url)
    assert again.status_code == 200
    assert "long" in again.text
