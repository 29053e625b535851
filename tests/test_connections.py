"""The connection behind the real HTTP server. A client sending its request's headers or its
body slowly is answered 408 and closed once the time for them is up, while other clients are
served as usual. A request refused before its body has arrived is answered, and the connection
closed gracefully, so the client reads the answer rather than a reset; what the server reads
and throws away meanwhile is bounded in bytes and in time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest

from .conftest import TEST_SECRET, bearer, token
from .support import ServerProcess, server_process

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
# Beyond a limit, how long the server may take to act on it on a busy machine.
SLACK = 1.5
LINGERING_SECONDS = 2.0
LINGERING_BYTES = 8 * 1024 * 1024  # the default
MAX_BODY_BYTES = 65536  # the default
TWO_MB = 2_000_000
REPEATS = 20
PATH = "/customer/c1/addPoints"
TOO_LARGE = {
    "type": "about:blank",
    "title": HTTPStatus(413).phrase,
    "status": 413,
    "detail": f"Request body exceeds {MAX_BODY_BYTES} bytes",
    "instance": PATH,
}


@pytest.fixture(scope="module")
def server(pg_url: str) -> Iterator[ServerProcess]:
    env = {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "REWARDPOINTS_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "REWARDPOINTS_LINGERING_CLOSE_SECONDS": str(LINGERING_SECONDS),
    }
    with server_process(env) as process:
        yield process


def _address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.base.removeprefix("http://").split(":")
    return host, int(port)


# ---- slow clients ----------------------------------------------------------------------------

SLOW_HEADERS = 24
SLOW_BODIES = 24
IDLE = 4
PACE = 0.1  # seconds between two bytes of a slow client


def _timed_out(what: str, limit: float, instance: str) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": f"Request {what} not received within {limit:g} s",
        "instance": instance,
    }


async def _slow_client(
    address: tuple[str, int], at_once: bytes, trickled: bytes | None, *, kept_alive: bool = False
) -> tuple[float, bytes]:
    """Send ``at_once``, then ``trickled`` one byte every ``PACE`` seconds and spaces after it,
    never finishing (nothing at all if it is None): the seconds from then until the server
    closed its side, and all it sent; ``inf`` if it did not close within 10 s. ``kept_alive``:
    on a connection that has just been served a request."""
    reader, writer = await asyncio.open_connection(*address)
    if kept_alive:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        [length] = [
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ]
        await reader.readexactly(length)
    writer.write(at_once)
    await writer.drain()
    started = time.monotonic()

    async def trickle(data: bytes) -> None:
        with contextlib.suppress(OSError):
            for byte in itertools.chain(data, itertools.repeat(ord(" "))):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(PACE)

    sending = asyncio.create_task(trickle(trickled)) if trickled is not None else None
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
        took = time.monotonic() - started
    except TimeoutError:
        answer, took = b"", float("inf")
    finally:
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        writer.close()
    return took, answer


def _answer(response: bytes) -> tuple[list[bytes], Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines, json.loads(body) if body else None


async def test_slow_clients_are_answered_408_and_closed_while_others_are_served(
    server: ServerProcess, tenant: str
) -> None:
    address = _address(server)
    known = bearer(token(tenant))
    authorization = known["Authorization"]
    request_line = "POST /reward-points/customer/c{n}/addPoints HTTP/1.1\r\n"
    headers = f"Host: test\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\n"
    clients: list[Any] = []
    expected: list[tuple[float, dict[str, Any] | None]] = []
    for n in range(SLOW_HEADERS):
        start = request_line.format(n=n).encode()
        if n % 2:  # the request line and a header at once, then the next header a byte at a time
            clients.append(_slow_client(address, start + b"Host: test\r\n", b"X-Slow: "))
            instance = f"/customer/c{n}/addPoints"
        else:  # every byte slowly, from the first: the path is not known yet
            clients.append(_slow_client(address, b"", start + b"Host: test\r\nX-Slow: "))
            instance = ""
        expected.append((HEADER_TIMEOUT, _timed_out("headers", HEADER_TIMEOUT, instance)))
    for n in range(SLOW_BODIES):
        line = request_line.format(n=n)
        if n % 2:
            framing, begun = "Content-Length: 1000\r\n\r\n", b'{"points": 5'
        else:
            framing, begun = "Transfer-Encoding: chunked\r\n\r\n", b'3e8\r\n{"points": 5'
        clients.append(_slow_client(address, (line + headers + framing).encode(), begun))
        instance = f"/customer/c{n}/addPoints"
        expected.append((BODY_TIMEOUT, _timed_out("body", BODY_TIMEOUT, instance)))
    for _ in range(IDLE):
        clients.append(_slow_client(address, b"", None))
        expected.append((HEADER_TIMEOUT, None))
    clients.append(
        _slow_client(
            address, b"GET /health/live HTTP/1.1\r\nHost: test\r\n", b"X-Slow: ", kept_alive=True
        )
    )
    expected.append((HEADER_TIMEOUT, _timed_out("headers", HEADER_TIMEOUT, "/health/live")))

    async with httpx.AsyncClient(base_url=server.base + "/reward-points", timeout=30) as http:
        # The token known beforehand: the slow bodies go through the fast lane.
        first = await http.post("/customer/fast/addPoints", json={"points": 5}, headers=known)
        slow = asyncio.gather(*clients)
        await asyncio.sleep(PACE * 3)  # all of them connected and sending
        during = await http.post("/customer/fast/addPoints", json={"points": 5}, headers=known)
        balance = await http.get("/customer/fast", headers=known)
        results = await slow
        after = await http.get("/customer/fast", headers=known)
    assert first.status_code == during.status_code == 201, (first.text, during.text)
    assert balance.json() == after.json() == 10

    for (took, response), (limit, problem) in zip(results, expected, strict=True):
        assert took < limit + SLACK, (took, limit, response[:300])
        if problem is None:  # an idle connection: closed without an answer
            assert response == b""
            continue
        lines, body = _answer(response)
        assert lines[0] == b"HTTP/1.1 408 Request Timeout", response[:300]
        assert b"connection: close" in lines
        assert body == problem
    assert "Traceback" not in server.output()


SHOP = "https://shop.example.com"


@pytest.fixture(scope="module")
def cors_server(pg_url: str) -> Iterator[ServerProcess]:
    env = {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "REWARDPOINTS_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "REWARDPOINTS_CORS_ORIGINS": SHOP,
    }
    with server_process(env) as process:
        yield process


async def test_a_408_to_a_storefront_origin_carries_the_cors_headers(
    cors_server: ServerProcess, tenant: str
) -> None:
    """The 408s are written by the connection, outside the application: they carry the CORS
    headers all the same when the request's Origin has arrived, so the page reads them."""
    address = _address(cors_server)
    line = b"POST /reward-points/customer/c1/addPoints HTTP/1.1\r\nHost: test\r\n"
    authorization = bearer(token(tenant))["Authorization"].encode()
    head = line + b"Origin: " + SHOP.encode() + b"\r\nAuthorization: " + authorization + b"\r\n"
    slow_body, slow_headers, elsewhere = await asyncio.gather(
        _slow_client(
            address,
            head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            b'{"points": 5',
        ),
        _slow_client(address, head, b"X-Slow: "),
        _slow_client(address, line + b"Origin: https://evil.example.net\r\n", b"X-Slow: "),
    )
    for (_, response), what, limit in (
        (slow_body, "body", BODY_TIMEOUT),
        (slow_headers, "headers", HEADER_TIMEOUT),
    ):
        lines, body = _answer(response)
        assert lines[0] == b"HTTP/1.1 408 Request Timeout", response[:300]
        assert body == _timed_out(what, limit, "/customer/c1/addPoints")
        assert f"access-control-allow-origin: {SHOP}".encode() in lines, lines
        assert any(line.startswith(b"access-control-expose-headers: ") for line in lines)
    lines, _ = _answer(elsewhere[1])
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert not any(line.startswith(b"access-control-") for line in lines), lines


async def _pieces(total: int, piece: int = 65536) -> AsyncIterator[bytes]:
    """A JSON body of ``total`` bytes, sent chunked (no Content-Length)."""
    head = b'{"points": 5, "description": "'
    tail = b'"}'
    yield head
    left = total - len(head) - len(tail)
    while left > 0:
        yield b"x" * min(piece, left)
        left -= piece
    yield tail


@pytest.mark.parametrize("framing", ["content-length", "chunked", "expect-100-continue"])
async def test_a_body_of_2_mb_always_gets_the_413(
    server: ServerProcess, tenant: str, framing: str
) -> None:
    """httpx's async client writes the whole body before it reads, and loses what was
    received when a write fails: a server that closes on the unread body resets the connection
    and the client reads that instead of the 413."""
    headers = bearer(token(tenant))
    async with httpx.AsyncClient(base_url=server.base + "/reward-points", timeout=30) as http:
        for _ in range(REPEATS):
            if framing == "chunked":
                response = await http.post(
                    PATH,
                    content=_pieces(TWO_MB),
                    headers={**headers, "Content-Type": "application/json"},
                )
                assert "content-length" not in response.request.headers
            else:
                extra = {"Expect": "100-continue"} if framing == "expect-100-continue" else {}
                response = await http.post(
                    PATH,
                    json={"points": 5, "description": "x" * TWO_MB},
                    headers={**headers, **extra},
                )
            assert response.status_code == 413, response.text
            assert response.json() == TOO_LARGE
            assert response.headers["connection"] == "close"
        balance = await http.get("/customer/c1", headers=headers)
    assert balance.status_code == 404  # nothing was written
    assert "Traceback" not in server.output()


def _endless_body(
    server: ServerProcess, tenant: str, *, piece: int, pause: float, give_up_after: float
) -> tuple[bytes, int, float]:
    """Declare a body of 1 GiB and send it ``piece`` bytes at a time, ``pause`` seconds apart,
    until a write fails: the answer then read, the bytes written, and the seconds it took."""
    request = (
        f"POST /reward-points{PATH} HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {bearer(token(tenant))['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {2**30}\r\n\r\n"
    ).encode()
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.sendall(request)
        started = time.monotonic()
        written = 0
        try:
            while time.monotonic() - started < give_up_after:
                sock.sendall(b"x" * piece)
                written += piece
                if pause:
                    time.sleep(pause)
        except OSError:
            pass
        took = time.monotonic() - started
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, written, took


def _problem(answer: bytes) -> Any:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:300]
    return json.loads(body)


async def test_a_client_that_keeps_sending_is_read_for_the_lingering_time_then_closed(
    server: ServerProcess, tenant: str
) -> None:
    """1 KB every 50 ms: the server answers at once, goes on reading (the client's writes
    succeed) for the lingering time, then closes."""
    answer, written, took = _endless_body(
        server, tenant, piece=1024, pause=0.05, give_up_after=LINGERING_SECONDS + 8
    )
    assert _problem(answer) == TOO_LARGE
    assert took >= LINGERING_SECONDS / 2, (took, written)
    assert took < LINGERING_SECONDS + 2, (took, written)


async def test_a_client_that_sends_fast_is_closed_after_the_lingering_bytes(
    server: ServerProcess, tenant: str
) -> None:
    """As fast as it can: the server throws away the lingering bytes, then closes, well
    before the lingering time and long before the declared 1 GiB."""
    answer, written, took = _endless_body(
        server, tenant, piece=65536, pause=0, give_up_after=LINGERING_SECONDS + 8
    )
    assert _problem(answer) == TOO_LARGE
    assert written >= LINGERING_BYTES, written
    # What the two sockets' buffers hold besides: far less than the declared body.
    assert written < 64 * 1024 * 1024, written
    assert took < LINGERING_SECONDS, took


# ---- answers in one piece --------------------------------------------------------------------


def _segments_received(sock: socket.socket) -> int:
    """TCP segments this socket has received (Linux's tcp_info.tcpi_segs_in)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[140:144], "little")


@pytest.mark.parametrize(
    "request_line",
    [b"GET /reward-points/customer/nobody", b"GET /health/live"],
    ids=["an error answer", "a small answer"],
)
def test_an_answer_leaves_in_one_segment(server: ServerProcess, request_line: bytes) -> None:
    """An answer's status line, headers and body are sent as one write, so the client (or the
    balancer in front) receives and wakes up once per answer, not once for the head and again
    for the body: 20 requests one after another on one connection, about 20 segments back."""
    headers = f"Host: rp\r\nAuthorization: Bearer {token('t1')}\r\n\r\n".encode()
    with socket.create_connection(_address(server), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        before = _segments_received(sock)
        for _ in range(REPEATS):
            sock.sendall(request_line + b" HTTP/1.1\r\n" + headers)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            while len(body) < length:
                body += sock.recv(65536)
            assert len(body) == length and body
        received = _segments_received(sock) - before
    # One per answer; a few more for an acknowledgement the server sent on its own.
    assert received <= REPEATS + 3, received
