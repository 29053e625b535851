"""The HTTP connection: uvicorn's httptools protocol, with time limits on receiving a request
and a graceful close.

uvicorn bounds neither how long a client may take to send a request's headers nor its body
(its keep-alive timeout ends only idle connections, and any byte received stops it), so a
client sending a byte now and then holds a connection, and its memory, as long as it likes. So
a request's headers must arrive within ``header_timeout`` of its first byte (of the
connection's opening, for the first request), and its body within ``body_timeout`` of the end
of its headers. Past either, the client is answered 408 in the 400 shape with ``Connection:
close`` (a request whose answer has begun is only closed), and the application, should it be
waiting for the body, hears that the client is gone. A connection that never sent a byte is
closed without an answer.

uvicorn also closes a connection at once after an answer with ``Connection: close``, even when
the client is still sending its request: a 413 to a body over the limit, answered before the
body is read. The kernel then resets the connection because of the unread bytes, and a client
still writing often gets the reset instead of the answer. So a connection closed while a
request is still arriving is closed the way RFC 9112 section 9.6 asks: the answer is sent and
the sending side shut down, then what the client still sends is read and thrown away until the
client closes too, or ``lingering_bytes`` have come, or ``lingering_seconds`` have passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..config import Settings
from .cors import cors_headers
from .errors import instance_of_path, problem


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    # Longest time for a request's headers, and for its body; 0: no limit.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    # After closing a connection on a request still arriving: how long, and how many of its
    # bytes, to read and throw away before closing outright; 0 seconds: close outright.
    lingering_seconds: float = 5.0
    lingering_bytes: int = 8 * 1024 * 1024
    # The CORS origins (api/cors.py), for the 408s answered here, outside the application.
    cors_origins: tuple[str, ...] = ()


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """What uvicorn builds each connection's protocol with (its ``http`` option): a partial
    carrying the limits, which pickles, so it reaches uvicorn's worker processes too."""
    limits = ConnectionLimits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        lingering_seconds=settings.lingering_close_seconds,
        lingering_bytes=settings.lingering_close_bytes,
        cors_origins=settings.cors_allowed_origins,
    )
    return cast("type[asyncio.Protocol]", partial(HttpProtocol, limits=limits))


Phase = Literal["headers", "body"]


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, timing the request that is arriving, and whose
    ``transport.close()`` closes gracefully."""

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
        # A request has begun and has not yet arrived whole; its headers have arrived.
        self.receiving = False
        self.head_received = False
        self.lingering = False
        self.discarded = 0
        self.lost = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None
        self._timed_phase: Phase | None = None

    # ---- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.socket_transport = transport
        super().connection_made(_GracefulTransport(transport, self))
        self._time("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stop_timing()
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
        # Timers are set here, once per read, not per parser event: a request that arrives
        # whole in one read, as nearly all do, is never timed.
        if self.lingering or self.lost:
            return
        if not self.receiving:
            self._stop_timing()
        elif not self.head_received:
            self._time("headers")
        else:
            self._time("body")

    def handle_websocket_upgrade(self) -> None:
        self._stop_timing()
        super().handle_websocket_upgrade()

    # ---- parser events -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.receiving = True
        self.head_received = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.head_received = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.receiving = False
        super().on_message_complete()

    # ---- timing the request that is arriving ---------------------------------------------

    def _time(self, phase: Phase) -> None:
        """Time ``phase`` of the request arriving, unless it is timed already."""
        if self._timed_phase == phase:
            return
        self._stop_timing()
        timeout = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
        if timeout > 0:
            self._timed_phase = phase
            self._request_timer = self.loop.call_later(timeout, self._timed_out, phase)

    def _stop_timing(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        self._timed_phase = None

    def _timed_out(self, phase: Phase) -> None:
        self._request_timer = None
        self._timed_phase = None
        if self.lingering or self.lost:
            return
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete
        if phase == "body" and self.pipeline:
            # The request waits behind an earlier one, and uvicorn reads nothing of it
            # meanwhile: its time has not begun.
            self._time("body")
            return
        if not self.receiving:
            self.transport.close()  # a connection that never sent a byte of a request
            return
        timeout = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
        if phase == "headers" and not answering:
            self._answer_408(
                f"Request headers not received within {timeout:g} s", self._path(), self.headers
            )
        elif phase == "body" and cycle is not None and not cycle.response_started:
            scope = cycle.scope
            instance = instance_of_path(scope["path"], scope.get("root_path", ""))
            self._answer_408(
                f"Request body not received within {timeout:g} s", instance, scope["headers"]
            )
        if cycle is not None and not cycle.response_complete:
            # The application, if it is waiting for the body, hears that the client is gone,
            # and whatever it sends next is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _path(self) -> str:
        """The path of the request arriving, once its request line has (with its first
        header); else nothing."""
        if not self.headers:
            return ""
        target = self.url.split(b"?", 1)[0].decode("latin-1")
        return instance_of_path(unquote(target, encoding="latin-1"), self.root_path)

    def _answer_408(
        self, detail: str, instance: str, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        """The 408 in the 400 shape; with the CORS headers when the request's ``Origin`` has
        arrived and is one of the configured origins, as the application's answers have."""
        response = problem(408, detail, instance)
        response.headers["Connection"] = "close"
        cors = cors_headers(self.limits.cors_origins, request_headers)
        head = [STATUS_LINE[408]]
        for name, value in [*self.server_state.default_headers, *response.raw_headers, *cors]:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", response.body]))

    # ---- closing -------------------------------------------------------------------------

    def close_gracefully(self) -> None:
        """Close at once when no request is arriving; else shut the sending side down and
        read the rest of the request, within the limits, before closing."""
        transport = self.socket_transport
        assert transport is not None
        if self.lingering or transport.is_closing():
            return
        self._stop_timing()
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


# Writes up to this size wait for the end of the event loop's turn (_GracefulTransport.write).
SMALL_WRITE = 16 * 1024


class _GracefulTransport(asyncio.Transport):
    """The socket's transport as uvicorn's protocol and request cycles see it: the same but
    for ``close()``, which is the protocol's ``close_gracefully()``, and for small writes,
    which leave together at the end of the event loop's turn.

    uvicorn writes an answer's status line and headers, then its body, as two writes: two
    system calls, two segments for the client (or the balancer) to receive and wake up for.
    Held until the end of the turn, the head and body of an answer made in one go (every
    answer but a streamed one) leave as one write, and so do the answers of requests a client
    sent together. A large write is not held or copied: what is held goes first, then it.
    """

    def __init__(self, transport: asyncio.Transport, protocol: HttpProtocol) -> None:
        super().__init__()
        self._transport = transport
        self._protocol = protocol
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        size = len(data)
        if size > SMALL_WRITE or self._held_bytes + size > SMALL_WRITE:
            self.flush()
            self._transport.write(data)
            return
        if not self._held:
            self._protocol.loop.call_soon(self.flush)
        # A view or a bytearray may change before the end of the turn: what is held is a copy.
        self._held.append(data if isinstance(data, bytes) else bytes(data))
        self._held_bytes += size

    def flush(self) -> None:
        """Write what is held now."""
        if self._held:
            held = self._held
            self._held = []
            self._held_bytes = 0
            if not self._transport.is_closing():  # else the connection is gone, and its bytes
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._protocol.close_gracefully()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
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
        return self._held_bytes + self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()
