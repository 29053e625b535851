"""Streamed answers (summaryBatch, long summaries) that give up on a client that stops reading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("rewardpoints")

# The most handed to the server in one message. The server takes a message once what it still
# has to send is under its low-water mark (16 KB for uvicorn), so this bounds what a client
# must read within the send timeout: about this much plus the server's high-water mark (64 KB).
SLICE_BYTES = 64 * 1024


class _Stalled(Exception):
    pass


class StreamedResponse(StreamingResponse):
    """A JSON answer sent as it is read, ended when its client stops taking it.

    A streamed summary or summaryBatch holds database connections, and a snapshot that
    PostgreSQL's vacuum has to respect, until its last part is sent. A client that keeps its
    connection open and stops reading would hold them for as long as it likes. When the server
    cannot take the next slice of the answer for ``send_timeout`` seconds (0: no limit) because
    the client has not read what is ahead of it, the stream is closed, which gives its
    connections up, and the response ends without its last chunk: the client sees it broken
    off, never a complete answer. A client that keeps reading (about 128 KB per
    ``send_timeout`` at the least) is served whole however long it takes in all; the end of an
    answer, sent once its stream has given everything up, waits as long as the client takes.

    The stream is also closed as soon as the response ends in any other way (sent whole, the
    client gone, cancelled), rather than whenever the generator is collected; so are the
    generators in ``owns`` (those ``content`` reads from, already started), even when the
    answer ended before ``content`` was started.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes | memoryview],
        *,
        send_timeout: float,
        owns: Sequence[AsyncGenerator[object, None]] = (),
    ) -> None:
        super().__init__(content, media_type="application/json")
        self.send_timeout = send_timeout or None
        self._owns = owns
        self._path = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._path = scope.get("path", "")
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        async def bounded(message: Message) -> None:
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
            except TimeoutError:
                raise _Stalled from None

        started = False
        try:
            start = {"type": "http.response.start", "status": self.status_code}
            await bounded({**start, "headers": self.raw_headers})
            started = True
            async for chunk in self.body_iterator:
                part = chunk.encode(self.charset) if isinstance(chunk, str) else chunk
                slices = [part] if len(part) <= SLICE_BYTES else _slices(part)
                for piece in slices:
                    await bounded({"type": "http.response.body", "body": piece, "more_body": True})
            # The stream has ended and given up what it held: the end may wait for the client.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except _Stalled:
            # Returning without the last message: the server closes the connection.
            log.warning(
                "GET %s: the client took nothing for %g s; the streamed answer was %s",
                self._path,
                self.send_timeout,
                "ended" if started else "not started",
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                for generator in self._owns:
                    await generator.aclose()


def _slices(part: bytes | memoryview) -> list[memoryview]:
    view = memoryview(part)
    return [view[offset : offset + SLICE_BYTES] for offset in range(0, len(part), SLICE_BYTES)]
