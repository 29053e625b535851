"""Request limits, enforced before the application reads the request: the size of the headers
and of the request target, a path that is valid UTF-8, the size of the body, and how deeply
JSON in the body nests."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import bad_request

# The HTTP server (uvicorn with httptools) enforces no limit of its own on either.
MAX_HEADER_BYTES = 16 * 1024
MAX_TARGET_BYTES = 8 * 1024
# Python's json parser recurses once per level and fails with RecursionError somewhere near
# 1,000 levels, depending on how deep the call stack already is: without a fixed limit the same
# body could be read or refused depending on the code path. No request of this API nests
# anywhere near this deep.
MAX_JSON_NESTING = 128
_JSON_STRING_OR_BRACKET = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class BodyLimitMiddleware:
    """Answer 431 to headers over ``max_header_bytes``, 414 to a path and query over
    ``max_target_bytes``, 400 to a path that is not valid UTF-8 once percent-decoded (the
    server would turn its bytes into U+FFFD, and two different paths into one id), and 413 to a
    body over ``max_bytes``, buffering at most ``max_bytes`` of it."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_target_bytes: int = MAX_TARGET_BYTES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.max_target_bytes = max_target_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = request_line_and_headers_problem(
            scope, self.max_header_bytes, self.max_target_bytes
        )
        if problem is not None:
            detail, status = problem
            response = bad_request(Request(scope), detail, status=status)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_nesting_exceeds(body, MAX_JSON_NESTING):
            response = bad_request(Request(scope), "Malformed JSON request body: nested too deeply")
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = bad_request(
            Request(scope),
            f"Request body exceeds {self.max_bytes} bytes",
            status=413,
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


def request_line_and_headers_problem(
    scope: Scope, max_header_bytes: int, max_target_bytes: int
) -> tuple[str, int] | None:
    """What is wrong with the request's headers and target, and the status to answer."""
    header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
    if header_bytes > max_header_bytes:
        return f"Request headers exceed {max_header_bytes} bytes", 431
    raw_path: bytes | None = scope.get("raw_path")
    path_bytes = len(raw_path) if raw_path is not None else len(scope["path"].encode())
    if path_bytes + len(scope.get("query_string", b"")) > max_target_bytes:
        return f"Request path and query exceed {max_target_bytes} bytes", 414
    if raw_path is not None:
        try:
            unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            return "Request path is not valid UTF-8", 400
    return None


def json_nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether JSON in ``body`` opens more than ``limit`` arrays or objects inside each other
    (brackets in strings do not count). Cheap for the usual body, which has fewer brackets
    than the limit in all."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(body):
        token = match[0]
        if token == b"[" or token == b"{":
            depth += 1
            if depth > limit:
                return True
        elif token == b"]" or token == b"}":
            depth -= 1
    return False
