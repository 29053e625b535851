"""CORS, so that a storefront's pages on the configured origins may call the service from the
shopper's browser with a customer's token.

Starlette's CORSMiddleware does the work. It sits in front of the whole application, the fast
lane included (``RewardPointsApp`` in app.py), so preflights are answered for every path and
every answer, errors and 500s included, carries the headers. A request without an ``Origin``
header (a server, a same-origin GET) goes straight on: nothing is added to its answer. A
request from an origin not on the list is answered as if CORS were off (with ``Vary: Origin``):
no ``Access-Control-*`` header, so the browser keeps the answer from that page, and a preflight
from it reaches the application, which answers 405 as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What the storefront's requests carry, beyond the headers the browser allows anyway.
ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept-Language",
    "Content-Language",
    "Idempotency-Key",
    "Emporix-Tenant",
    "X-Request-ID",
)
# Answer headers a page may read.
EXPOSED_HEADERS = ("Retry-After", "Location", "X-Request-ID", "ETag", "Idempotent-Replayed")
# How long a browser may reuse a preflight's answer (Chromium keeps it at most two hours).
MAX_AGE_SECONDS = 7200


class Cors:
    def __init__(self, app: ASGIApp, *, origins: Iterable[str], methods: Iterable[str]) -> None:
        self.app = app
        # Bearer tokens need no cookies: credentials are never allowed.
        self.middleware = CORSMiddleware(
            app,
            allow_origins=tuple(origins),
            allow_methods=tuple(methods),
            allow_headers=ALLOWED_HEADERS,
            allow_credentials=False,
            expose_headers=EXPOSED_HEADERS,
            max_age=MAX_AGE_SECONDS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        if origin is None:
            await self.app(scope, receive, send)
        elif self.middleware.is_allowed_origin(origin.decode("latin-1")):
            await self.middleware(scope, receive, send)
        else:
            await self.app(scope, receive, _varying_by_origin(send))

    def headers_for(
        self, request_headers: Iterable[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """The CORS headers of an answer made outside the application (the connection's
        408, api/protocol.py), as the middleware adds them to the application's answers."""
        received = Headers(raw=list(request_headers))
        origin = received.get("origin")
        if origin is None or not self.middleware.is_allowed_origin(origin):
            return []
        start: Message = {"type": "http.response.start", "status": 408, "headers": []}

        async def keep(message: Message) -> None:
            pass

        # The middleware's send() only edits the message and hands it on: it never waits.
        step = self.middleware.send(start, keep, received)
        try:
            step.send(None)
        except StopIteration:
            pass
        else:  # pragma: no cover - a later Starlette that waits in send()
            step.close()
            return []
        headers: list[tuple[bytes, bytes]] = start["headers"]
        return headers


def cors_headers(
    origins: tuple[str, ...], request_headers: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The CORS headers for an answer made outside the application, to a request with these
    headers (those that have arrived)."""
    if not origins:
        return []
    return Cors(_no_application, origins=origins, methods=()).headers_for(request_headers)


async def _no_application(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("only the headers are asked for")


def _varying_by_origin(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
        await send(message)

    return sending
