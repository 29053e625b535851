"""The connection behind the real HTTP server: a request refused before its body has arrived
is answered, and the connection closed gracefully, so the client reads the answer rather than a
reset; what the server reads and throws away meanwhile is bounded in bytes and in time."""

from __future__ import annotations

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
        "REWARDPOINTS_LINGERING_CLOSE_SECONDS": str(LINGERING_SECONDS),
    }
    with server_process(env) as process:
        yield process


def _address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.base.removeprefix("http://").split(":")
    return host, int(port)


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
