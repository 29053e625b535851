"""The streamed answers' response (api/streaming.py) through its ASGI interface, with a server
side whose ``send`` the test holds back: what a client must read to be kept, when it is given
up, and that a given-up or finished answer closes its stream at once. The real-server tests are
in test_stalled_clients.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable

import pytest
from starlette.types import Message

from rewardpoints.api.management import _parts
from rewardpoints.api.streaming import SLICE_BYTES, StreamedResponse

PARTS = [b"a" * 200_000, b"b" * 10, b"c" * SLICE_BYTES, b"d" * (SLICE_BYTES + 1)]


class Stream:
    """The parts, and whether their generator was closed (as a stream gives its connections
    up)."""

    def __init__(self) -> None:
        self.closed = False

    async def parts(self) -> AsyncGenerator[bytes, None]:
        try:
            for part in PARTS:
                yield part
        finally:
            self.closed = True


async def _never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _serve(
    timeout: float, hold: Callable[[Message, int], float | None]
) -> tuple[list[Message], Stream, float]:
    """Run a response whose server takes message number ``n`` after ``hold(message, n)``
    seconds (``None``: never). The messages taken, the stream, and the time it all took."""
    stream = Stream()
    taken: list[Message] = []

    async def send(message: Message) -> None:
        delay = hold(message, len(taken))
        if delay is None:
            await asyncio.Event().wait()
        await asyncio.sleep(delay or 0)
        taken.append(message)

    # As a route builds it: the source started (its first part read before answering), the
    # content a wrapper around it.
    source = stream.parts()
    first = await anext(source)
    content = _parts(first, source)
    response = StreamedResponse(content, send_timeout=timeout, owns=[source])
    started = time.monotonic()
    scope = {"type": "http", "path": "/reward-points/summaryBatch"}
    await asyncio.wait_for(response(scope, _never_disconnects, send), 10)
    return taken, stream, time.monotonic() - started


def _body(messages: list[Message]) -> bytes:
    return b"".join(m["body"] for m in messages if m["type"] == "http.response.body")


async def test_the_answer_is_handed_over_in_slices_so_a_slow_reader_needs_little_per_wait() -> None:
    taken, stream, _ = await _serve(5, lambda message, n: 0)
    bodies = [m for m in taken if m["type"] == "http.response.body"]
    assert all(len(m["body"]) <= SLICE_BYTES for m in bodies)
    assert len(bodies) == 4 + 1 + 1 + 2 + 1  # 200,000 bytes in four, the end
    assert _body(taken) == b"".join(PARTS)
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert stream.closed


async def test_a_server_that_takes_nothing_for_the_timeout_ends_the_answer_and_its_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken, stream, took = await _serve(0.2, lambda message, n: None if n == 3 else 0)
    assert took < 2
    assert len(taken) == 3  # the start and two slices; never the end
    assert all(m.get("more_body", True) for m in taken)
    assert stream.closed
    assert "took nothing for 0.2 s; the streamed answer was ended" in caplog.text


async def test_pauses_shorter_than_the_timeout_however_many_are_waited_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taken, stream, took = await _serve(0.3, lambda message, n: 0.1)
    assert took > 0.3 * 3  # ten pauses in all
    assert _body(taken) == b"".join(PARTS)
    assert taken[-1]["more_body"] is False
    assert "took nothing" not in caplog.text


async def test_the_end_of_an_answer_waits_for_the_client_as_long_as_it_takes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the stream has given everything, nothing is held: the end is not timed."""

    def hold(message: Message, n: int) -> float:
        return 0.6 if message.get("more_body") is False else 0

    taken, stream, _ = await _serve(0.2, hold)
    assert taken[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert _body(taken) == b"".join(PARTS)
    assert "took nothing" not in caplog.text


async def test_a_timeout_of_zero_never_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    taken, stream, _ = await _serve(0, lambda message, n: 0.5 if n == 2 else 0)
    assert _body(taken) == b"".join(PARTS)
    assert taken[-1]["more_body"] is False
    assert "took nothing" not in caplog.text


async def test_a_client_that_takes_nothing_before_the_answer_starts_is_given_up_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pipelined request behind an answer its client has not read: the stream is closed, and
    no part of the answer is sent."""
    caplog.set_level(logging.WARNING)
    taken, stream, _ = await _serve(0.2, lambda message, n: None)
    assert taken == []
    assert stream.closed
    assert "the streamed answer was not started" in caplog.text
