"""Streamed answers (summaryBatch, long summaries) that give up on a client that stops reading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger("rewardpoints")


class _Stalled(Exception):
    pass


class StreamedResponse(StreamingResponse):
    """A JSON answer sent as it is read, ended when its client takes nothing for a while.

    A streamed summary or summaryBatch holds database connections, and a snapshot that
    PostgreSQL's vacuum has to respect, until its last part is sent. A client that keeps its
    connection open and stops reading would hold them for as long as it likes. When a part
    cannot be handed to the server for ``send_timeout`` seconds (the socket's buffers are
    full), the stream is closed, which gives its connections up, and the response ends
    without its last chunk: the client sees it broken off, never a complete answer. A slow
    client that keeps reading is not affected, however long it takes in all.

    The stream is also closed as soon as the response ends in any other way (sent whole, the
    client gone, cancelled), rather than whenever the generator is collected.
    """

    def __init__(self, content: AsyncIterator[bytes], *, send_timeout: float) -> None:
        super().__init__(content, media_type="application/json")
        self.send_timeout = send_timeout
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

        try:
            await super().stream_response(bounded)
        except _Stalled:
            # Returning without the last message: the server closes the connection.
            log.warning(
                "GET %s: the client took nothing for %g s; the streamed answer was ended",
                self._path,
                self.send_timeout,
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
