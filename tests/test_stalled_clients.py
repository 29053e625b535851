"""A streamed answer (summaryBatch, a long summary) holds database connections and a snapshot
while it is sent. A client that keeps its connection open and stops reading is given up after
``REWARDPOINTS_STREAM_SEND_TIMEOUT_SECONDS`` without progress: the connections are freed, the
answer ends broken off (never looking complete), and a slow client that keeps reading is served
whole however long it takes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from functools import partial

import httpx
import pytest

from .conftest import TEST_SECRET, bearer, token
from .support import (
    bulk_load,
    busy_connections,
    connect,
    load_long_history,
    server_process,
    stall,
    until_no_busy_connection,
)

pytestmark = pytest.mark.slow

SEND_TIMEOUT = 1.5
PATHS = ["/reward-points/summaryBatch", "/reward-points/customer/long/summary"]
STALLS = 8
GIVEN_UP = "the client took nothing for 1.5 s; the streamed answer was ended"


async def _seed(pg_url: str, tenant: str, path: str) -> None:
    """More than the read-ahead and the sockets' buffers hold together: for summaryBatch 60,000
    customers (26 MB of JSON, read in 30 ranges on two connections, 8 MB ahead on each), for
    the summary customer "long" with 30,000 lots (7.6 MB, 1 MB ahead)."""
    if path.endswith("/summary"):
        await load_long_history(pg_url, tenant, lots=30_000, used=10_000)
        return
    conn = await connect(pg_url)
    try:
        await bulk_load(conn, tenant, 60_000)
    finally:
        await conn.close()


def _env(pg_url: str) -> dict[str, str]:
    return {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_STREAM_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
    }


def _read_to_the_end(sock: socket.socket, pause: float = 0.0, pauses: int = 0) -> bytes:
    """Everything until the server closes the connection or ends the chunked body; first
    ``pauses`` times: read a burst, then take nothing for ``pause`` seconds."""
    sock.settimeout(30)
    received = bytearray()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if pauses:
            burst_end = len(received) + 512 * 1024
            while len(received) < burst_end:
                chunk = sock.recv(65536)
                if not chunk:
                    return bytes(received)
                received += chunk
            time.sleep(pause)
            pauses -= 1
            continue
        chunk = sock.recv(65536)
        received += chunk
        if not chunk or received.endswith(b"\r\n0\r\n\r\n"):
            return bytes(received)
    raise AssertionError("the answer neither ended nor broke off within 60 s")


def _body(response: bytes) -> tuple[bytes, bool]:
    """The chunked body of a raw HTTP response, and whether its last chunk arrived."""
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"transfer-encoding: chunked" in head.lower()
    body = bytearray()
    while True:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            return bytes(body), False
        size = int(size_line, 16)
        if size == 0:
            return bytes(body), rest == b"\r\n"
        if len(rest) < size + 2:
            return bytes(body + rest[:size]), False
        body += rest[:size]
        rest = rest[size + 2 :]


@pytest.mark.parametrize("path", PATHS)
async def test_a_client_that_stops_reading_is_given_up_and_its_connections_freed(
    pg_url: str, tenant: str, path: str
) -> None:
    await _seed(pg_url, tenant, path)
    headers = bearer(token(tenant))
    with server_process(_env(pg_url)) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            whole = await http.get(path, headers=headers)
            assert whole.status_code == 200
            assert len(whole.content) > 6_000_000  # more than read ahead and socket buffers
            sock, head = await asyncio.to_thread(stall, server.base, headers, path)
            try:
                # The stream holds its connection(s) while its client reads nothing ...
                assert await busy_connections(pg_url)
                started = time.monotonic()
                # ... until the send timeout gives it up.
                await until_no_busy_connection(pg_url)
                assert time.monotonic() - started < SEND_TIMEOUT + 2
                assert GIVEN_UP in server.output()
                # The client, reading again, gets what was on its way, then the connection
                # closes without the last chunk: a broken-off answer, not a short one.
                received = head + await asyncio.to_thread(_read_to_the_end, sock)
            finally:
                sock.close()
            body, complete = _body(received)
            assert not complete
            assert 0 < len(body) < len(whole.content)
            assert whole.content.startswith(body)
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
            # Nothing was left behind: the next answer is whole.
            again = await http.get(path, headers=headers)
    assert again.status_code == 200
    assert again.content == whole.content


@pytest.mark.parametrize("path", PATHS)
async def test_a_slow_client_that_keeps_reading_gets_the_whole_answer(
    pg_url: str, tenant: str, path: str
) -> None:
    """Pauses shorter than the send timeout, together far longer than it."""
    await _seed(pg_url, tenant, path)
    headers = bearer(token(tenant))
    with server_process(_env(pg_url)) as server:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            whole = await http.get(path, headers=headers)
        assert whole.status_code == 200
        sock, head = await asyncio.to_thread(stall, server.base, headers, path)
        try:
            started = time.monotonic()
            received = head + await asyncio.to_thread(_read_to_the_end, sock, 0.6, 6)
            took = time.monotonic() - started
        finally:
            sock.close()
        await until_no_busy_connection(pg_url)
        output = server.output()
    assert took > 2 * SEND_TIMEOUT
    body, complete = _body(received)
    assert complete
    assert body == whole.content
    assert GIVEN_UP not in output


async def test_each_stalled_export_gives_its_connections_up_promptly(
    pg_url: str, tenant: str
) -> None:
    """However the stream stopped, its connections are closed at once when it is given up: a
    graceful close would wait up to 2 s for each connection whose COPY is mid-way. Whether a
    COPY is caught that way depends on timing (about one stall in three or four here), hence
    several stalls."""
    path = PATHS[0]
    await _seed(pg_url, tenant, path)
    headers = bearer(token(tenant))
    with server_process(_env(pg_url)) as server:
        for _ in range(STALLS):
            sock, _ = await asyncio.to_thread(
                partial(stall, shrink_after_connecting=True), server.base, headers, path
            )
            try:
                started = time.monotonic()
                await until_no_busy_connection(pg_url)
                assert time.monotonic() - started < SEND_TIMEOUT + 1.5
            finally:
                sock.close()
        assert server.output().count(GIVEN_UP) == STALLS
