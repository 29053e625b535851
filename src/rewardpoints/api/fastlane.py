"""The fast lane: the three busiest requests answered without FastAPI's per-request machinery.

A balance read, an addPoints and a redeemPoints are most of a shop's traffic. Through FastAPI
each one resolves its dependencies (bearer scheme, principal, path validation, body), which
costs the worker more CPU than the database call itself. The fast lane is an ASGI layer in
front of the whole application (``RewardPointsApp`` in app.py) that answers these three
requests itself when, and only when, they are plain: the usual path and method, no query
string, a bearer token the verifier has already verified (``TokenVerifier.known_principal``),
the scope the route demands, no body on a GET, and for a POST an ``application/json`` body
within the request limits that the route's own model accepts. It then calls the same ledger
method the route calls, answers with the same response, and answers the ledger's refusals
with the application's own error handlers.

Anything else (a first sight of a token, a missing scope, an invalid body, an
``Idempotency-Key``, a ``siteCode``, an ``Emporix-Tenant`` header that does not match, headers
or a path over the request limits) goes on to the application unchanged, body included, and
gets the answer the route gives. So the fast lane adds no behaviour of its own: it only skips
work for the requests whose answer it can give exactly as the route would; the tests run every
request through both and compare the answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import MANAGE_SCOPES, VIEW_SCOPES, Principal, TokenVerifier
from ..ledger import Ledger
from ..metrics import ROUTE_KEY
from .deps import DEFAULT_SITE_CODE, MAX_CUSTOMER_ID_LENGTH
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .limits import MAX_JSON_NESTING, json_nesting_exceeds, request_line_and_headers_problem
from .schemas import AddedPointsIn, RedeemedPointsIn

PREFIX = "/reward-points/customer/"
# The templates of the routes these requests take otherwise (management.py), for the metrics.
BALANCE_ROUTE = "/reward-points/customer/{customerId}"
ADD_ROUTE = "/reward-points/customer/{customerId}/addPoints"
REDEEM_ROUTE = "/reward-points/customer/{customerId}/redeemPoints"
_IDEMPOTENCY_HEADER = IDEMPOTENCY_HEADER.lower().encode()


# The messages Starlette's Response sends for the routes' answers (management.py): the
# balance as a JSON integer, and 201 with no content.
_JSON_TYPE = (b"content-type", b"application/json")
_CREATED_START: Message = {
    "type": "http.response.start",
    "status": 201,
    "headers": [(b"content-length", b"0")],
}
_NO_BODY: Message = {"type": "http.response.body", "body": b""}


async def _while_connected(receive: Receive, write: Any) -> bool:
    """Run ``write``; False if its client went away first, and ``write`` was withdrawn.

    A write waits in the process before it is sent (for its turn, or to go again alone after
    a statement left it undone), and a client that gave up may meanwhile have sent it again
    and been answered (a 400: too few points). Sent later, the first one would then be
    applied after the client was told it was not. Withdrawn while it waits, it is never sent
    (``Coalesced`` drops a request nobody waits for); one already sent completes, as before,
    and a retry of it finds its id."""
    task = asyncio.ensure_future(write)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        task.result()  # its error, if any
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away (the body has been read whole before)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_integer(send: Send, value: int) -> None:
    body = str(value).encode()
    headers = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_created(send: Send) -> None:
    await send(dict(_CREATED_START))
    await send(dict(_NO_BODY))


class FastLane:
    def __init__(
        self,
        app: ASGIApp,
        *,
        ledger: Ledger,
        verifier: TokenVerifier,
        handlers: Mapping[Any, Callable[..., Any]],
        max_bytes: int,
        max_header_bytes: int,
        max_target_bytes: int,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.verifier = verifier
        self.handlers = handlers
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.max_target_bytes = max_target_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["query_string"] or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        rest = path[len(PREFIX) :]
        method = scope["method"]
        if method == "GET":
            if "/" not in rest:
                scope[ROUTE_KEY] = BALANCE_ROUTE
                await self._balance(scope, receive, send, rest)
                return
        elif method == "POST":
            customer_id, _, action = rest.partition("/")
            if action == "addPoints":
                scope[ROUTE_KEY] = ADD_ROUTE
                await self._write(scope, receive, send, customer_id, AddedPointsIn, self._add)
                return
            if action == "redeemPoints":
                scope[ROUTE_KEY] = REDEEM_ROUTE
                await self._write(scope, receive, send, customer_id, RedeemedPointsIn, self._redeem)
                return
        await self.app(scope, receive, send)

    # ---- the three requests --------------------------------------------------------------

    async def _balance(self, scope: Scope, receive: Receive, send: Send, customer_id: str) -> None:
        principal = self._principal(scope, customer_id, VIEW_SCOPES, body=False)
        if principal is None:
            await self.app(scope, receive, send)
            return
        try:
            balance = await self.ledger.balance(principal.tenant, customer_id)
        except Exception as error:
            await self._answer_error(scope, receive, send, error)
            return
        await _send_integer(send, balance)

    async def _add(self, principal: Principal, customer_id: str, body: Any) -> None:
        assert isinstance(body, AddedPointsIn)
        await self.ledger.add_points(
            principal.tenant, customer_id, body.to_lot(), DEFAULT_SITE_CODE, actor=principal.actor
        )

    async def _redeem(self, principal: Principal, customer_id: str, body: Any) -> None:
        assert isinstance(body, RedeemedPointsIn)
        await self.ledger.redeem_points(
            principal.tenant, customer_id, body.to_redemption(), actor=principal.actor
        )

    async def _write(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        customer_id: str,
        model: type[BaseModel],
        command: Callable[[Principal, str, Any], Any],
    ) -> None:
        principal = self._principal(scope, customer_id, MANAGE_SCOPES, body=True)
        if principal is None:
            await self.app(scope, receive, send)
            return
        messages, body = await self._read_body(receive)
        if body is None:
            # Over the limit, or the client went away: the application reads the rest.
            return await self._pass_on(scope, receive, send, messages)
        if json_nesting_exceeds(body, MAX_JSON_NESTING):
            return await self._pass_on(scope, receive, send, messages)
        try:
            parsed = model.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):
            # Malformed JSON, a schema violation: the route's answer, with its details.
            return await self._pass_on(scope, receive, send, messages)
        try:
            if not await _while_connected(receive, command(principal, customer_id, parsed)):
                return  # the client went away before the write was sent: nothing was written
        except Exception as error:
            await self._answer_error(scope, receive, send, error)
            return
        await _send_created(send)

    async def _answer_error(
        self, scope: Scope, receive: Receive, send: Send, error: Exception
    ) -> None:
        """Answer as the application answers ``error`` raised by a route: with the handler
        Starlette's ExceptionMiddleware would pick (a status code's, else the nearest class in
        the error's MRO), else with the catch-all handler, after which the error is raised on
        to the server, as ServerErrorMiddleware does."""
        keys: list[Any] = list(type(error).__mro__)
        if isinstance(error, HTTPException):
            keys.insert(0, error.status_code)
        handler: Callable[..., Any] | None = None
        for key in keys:
            if key is Exception:
                break
            handler = self.handlers.get(key)
            if handler is not None:
                break
        catch_all = handler is None
        if handler is None:
            handler = self.handlers.get(500) or self.handlers.get(Exception)
            if handler is None:
                raise error
        response = handler(Request(scope), error)
        if inspect.isawaitable(response):
            response = await response
        assert isinstance(response, Response)
        await response(scope, receive, send)
        if catch_all:
            raise error

    # ---- what makes a request plain ------------------------------------------------------

    def _principal(
        self, scope: Scope, customer_id: str, scopes: tuple[str, ...], *, body: bool
    ) -> Principal | None:
        """The request's principal, when the request is one the fast lane answers."""
        if not 0 < len(customer_id) <= MAX_CUSTOMER_ID_LENGTH or "\x00" in customer_id:
            return None
        token: bytes | None = None
        tenant_header: bytes | None = None
        content_type: bytes | None = None
        for name, value in scope["headers"]:
            # A header sent twice is left to the application, which reads the first.
            if name == b"authorization":
                if token is not None:
                    return None
                token = value
            elif name == b"emporix-tenant":
                if tenant_header is not None:
                    return None
                tenant_header = value
            elif name == b"content-type":
                if content_type is not None:
                    return None
                content_type = value
            elif name == b"content-length":
                # A GET's body is left to the application, which reads it (and may refuse
                # it as too large); a POST's may not be over the limit.
                if not value.isdigit() or int(value) > (self.max_bytes if body else 0):
                    return None
            elif name == _IDEMPOTENCY_HEADER or (name == b"transfer-encoding" and not body):
                return None
        if token is None or not token.startswith(b"Bearer ") or len(token) < 8:
            return None
        if body and content_type != b"application/json":
            return None
        if (
            request_line_and_headers_problem(scope, self.max_header_bytes, self.max_target_bytes)
            is not None
        ):
            return None
        principal = self.verifier.known_principal(token[7:].decode("latin-1"))
        if principal is None or principal.is_customer or principal.scopes.isdisjoint(scopes):
            return None
        if tenant_header is not None and tenant_header.decode("latin-1") != principal.tenant:
            return None
        return principal

    async def _read_body(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages received, and the whole body unless it is over the limit or the
        client disconnected before sending all of it."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages, None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return messages, None
            if not message.get("more_body", False):
                break
        if len(messages) == 1:
            return messages, messages[0].get("body", b"")
        return messages, b"".join(message.get("body", b"") for message in messages)

    async def _pass_on(
        self, scope: Scope, receive: Receive, send: Send, messages: list[Message]
    ) -> None:
        """Hand the request to the application, replaying the messages already received."""
        pending = list(messages)

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)
