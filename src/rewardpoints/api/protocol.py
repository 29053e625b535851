"""The HTTP connection: uvicorn's httptools protocol, closing gracefully.

uvicorn closes a connection at once after an answer with ``Connection: close``, even when the
client is still sending its request: a 413 to a body over the limit, answered before the body
is read. The kernel then resets the connection because of the unread bytes, and a client still
writing often gets the reset instead of the answer. So a connection closed while a request is
still arriving is closed the way RFC 9112 section 9.6 asks: the answer is sent and the
sending side shut down, then what the client still sends is read and thrown away until the
client closes too, or ``lingering_bytes`` have come, or ``lingering_seconds`` have passed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ..config import Settings


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    # After closing a connection on a request still arriving: how long, and how many of its
    # bytes, to read and throw away before closing outright; 0 seconds: close outright.
    lingering_seconds: float = 5.0
    lingering_bytes: int = 8 * 1024 * 1024


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """What uvicorn builds each connection's protocol with (its ``http`` option): a partial
    carrying the limits, which pickles, so it reaches uvicorn's worker processes too."""
    limits = ConnectionLimits(
        lingering_seconds=settings.lingering_close_seconds,
        lingering_bytes=settings.lingering_close_bytes,
    )
    return cast("type[asyncio.Protocol]", partial(HttpProtocol, limits=limits))


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose ``transport.close()`` closes gracefully."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits = ConnectionLimits(),  # noqa: B008 - frozen
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.socket_transport: asyncio.Transport | None = None
        # A request has begun and has not yet arrived whole.
        self.receiving = False
        self.lingering = False
        self.discarded = 0
        self.lost = False
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.socket_transport = transport
        super().connection_made(_GracefulTransport(transport, self))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.discarded += len(data)
            if self.discarded > self.limits.lingering_bytes:
                self.close_now()
            return
        super().data_received(data)

    def on_message_begin(self) -> None:
        self.receiving = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self.receiving = False
        super().on_message_complete()

    def close_gracefully(self) -> None:
        """Close at once when no request is arriving; else shut the sending side down and
        read the rest of the request, within the limits, before closing."""
        transport = self.socket_transport
        assert transport is not None
        if self.lingering or transport.is_closing():
            return
        if (
            not self.receiving
            or self.lost
            or self.limits.lingering_seconds <= 0
            or not transport.can_write_eof()
        ):
            transport.close()
            return
        self.lingering = True
        # The client closing its side ends it: eof_received then lets the transport close.
        transport.write_eof()
        transport.resume_reading()  # uvicorn pauses reading while a body waits for the app
        self._linger_timer = self.loop.call_later(self.limits.lingering_seconds, self.close_now)

    def close_now(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        assert self.socket_transport is not None
        self.socket_transport.close()


class _GracefulTransport(asyncio.Transport):
    """The socket's transport as uvicorn's protocol and request cycles see it: the same but
    for ``close()``, which is the protocol's ``close_gracefully()``."""

    def __init__(self, transport: asyncio.Transport, protocol: HttpProtocol) -> None:
        super().__init__()
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_gracefully()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def abort(self) -> None:
        self._transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        self._transport.write(data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()
