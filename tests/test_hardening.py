"""Hardening: requests built to hurt, each refused with a clear 4xx in the problem shape of
CONTRACT.md section 4, and no change to any data. This fills the gaps test_bad_input.py leaves:
header and path sizes (against a real server: the HTTP server enforces neither), NUL and
invalid UTF-8 where test_bad_input.py sends none, dates at the edges of years 1 and 9999, JSON
nested deeper than Python's recursion limit, and arrays over their limit."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from rewardpoints.api.limits import MAX_HEADER_BYTES, MAX_TARGET_BYTES
from rewardpoints.api.schemas import MAX_JSON_DEPTH

from .conftest import TEST_SECRET
from .support import running_server
from .test_bad_input import EXISTING, NEW, State, seed, state_of

PREFIX = "/reward-points"
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}
MAX_USED_WITH = 1000

Headers = dict[str, str]


def assert_refused(
    response: httpx.Response,
    status: int,
    *,
    instance: str | None = None,
    mentions: Iterable[str] = (),
) -> dict[str, Any]:
    """The problem shape of CONTRACT.md section 4 with ``status``; ``instance`` when given."""
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert PROBLEM_KEYS <= body.keys() <= PROBLEM_KEYS | {"errors"}, body
    assert body["type"] == "about:blank"
    assert body["title"] == HTTPStatus(status).phrase
    assert body["status"] == status
    if instance is not None:
        assert body["instance"] == instance
    detail = body["detail"]
    assert isinstance(detail, str) and detail
    for word in mentions:
        assert re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", detail), (
            f"detail {detail!r} does not mention {word!r}"
        )
    return body


def path_of(operation: str, customer_id: str) -> str:
    return (
        f"/customer/{customer_id}"
        if operation == "create"
        else f"/customer/{customer_id}/{operation}"
    )


def lot_body(operation: str, lot: dict[str, Any]) -> dict[str, Any]:
    """The request body that carries ``lot``: startPoints on create."""
    return {"startPoints": lot} if operation == "create" else lot


# Where a body goes: (operation, customer). The lot of create rides in startPoints.
TARGETS = {
    "addPoints": ("addPoints", EXISTING),
    "redeemPoints": ("redeemPoints", EXISTING),
    "create": ("create", NEW),
}


async def assert_unchanged(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, before: State
) -> None:
    assert await state_of(client, headers, customer_id) == before
    balance = await client.get(f"{PREFIX}/customer/{EXISTING}", headers=headers)
    assert balance.json() == 70  # what seed() leaves


# ---- against a real server: the size of the headers and of the path --------------------------


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rewardpoints serve``: the limits must hold behind the real HTTP server."""
    workdir = tmp_path_factory.mktemp("hardening-server")
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    with contextlib.ExitStack() as stack:
        # The server reads `.env` from its working directory: start it where there is none.
        with contextlib.chdir(workdir):
            base = stack.enter_context(running_server(env))
        yield base


@pytest.fixture
async def served(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server, timeout=30) as http:
        yield http


def raw_request(base: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes no HTTP client would send; the status and body of the answer."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
async def test_header_of_100_kb_is_refused_with_431_and_changes_nothing(
    served: httpx.AsyncClient, headers: Headers, target: str
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(served, headers)
    before = await state_of(served, headers, customer_id)

    response = await served.post(
        PREFIX + path_of(operation, customer_id),
        json=lot_body(operation, {"points": 10}),
        headers={**headers, "X-Padding": "a" * 100_000},
    )

    assert_refused(
        response, 431, instance=path_of(operation, customer_id), mentions=[str(MAX_HEADER_BYTES)]
    )
    await assert_unchanged(served, headers, customer_id, before)


@pytest.mark.slow
async def test_headers_within_the_limit_are_served(
    served: httpx.AsyncClient, headers: Headers
) -> None:
    await seed(served, headers)

    response = await served.post(
        f"{PREFIX}/customer/{EXISTING}/addPoints",
        json={"points": 5},
        headers={**headers, "X-Padding": "a" * (MAX_HEADER_BYTES // 2)},
    )

    assert response.status_code == 201, response.text
    assert (await served.get(f"{PREFIX}/customer/{EXISTING}", headers=headers)).json() == 75


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_path_over_the_limit_is_refused_with_414_and_changes_nothing(
    served: httpx.AsyncClient, headers: Headers, method: str
) -> None:
    await seed(served, headers)
    before = await state_of(served, headers, EXISTING)
    customer_id = "c" * (MAX_TARGET_BYTES + 1)

    response = await served.request(
        method,
        f"{PREFIX}/customer/{customer_id}",
        json={"startPoints": {"points": 10}} if method == "POST" else None,
        headers=headers,
    )

    assert_refused(
        response, 414, instance=f"/customer/{customer_id}", mentions=[str(MAX_TARGET_BYTES)]
    )
    await assert_unchanged(served, headers, EXISTING, before)


@pytest.mark.slow
async def test_path_of_100_kb_is_refused_by_the_server_and_changes_nothing(
    served: httpx.AsyncClient, server: str, headers: Headers
) -> None:
    """Past 64 KiB the HTTP server's own URL parser gives up before the application sees the
    request: uvicorn answers a plain-text 400 of its own, which the service cannot shape."""
    await seed(served, headers)
    before = await state_of(served, headers, EXISTING)
    body = b'{"points": 10}'
    request = (
        b"POST /reward-points/customer/" + b"c" * 100_000 + b"/addPoints HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Authorization: " + headers["Authorization"].encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )

    status, _ = raw_request(server, request)

    assert status == 400
    await assert_unchanged(served, headers, EXISTING, before)


# The customer id as the server would decode it: invalid UTF-8 becomes U+FFFD, so two different
# ids would collapse into one. The path must be refused instead.
INVALID_UTF8_PATHS = {
    "ff": "%ff",
    "truncated-sequence": "a%C3",
    "overlong-slash": "%C0%AF",
    "encoded-surrogate": "%ED%A0%80",
}


@pytest.mark.slow
@pytest.mark.parametrize("encoded", INVALID_UTF8_PATHS.values(), ids=INVALID_UTF8_PATHS.keys())
@pytest.mark.parametrize("operation", ["addPoints", "redeemPoints", "create", "get", "delete"])
async def test_path_that_is_not_utf8_is_refused_and_changes_nothing(
    served: httpx.AsyncClient, headers: Headers, operation: str, encoded: str
) -> None:
    await seed(served, headers)
    # Make the server's U+FFFD customer exist, so a write to it would show.
    replacement = "%EF%BF%BD"
    created = await served.post(f"{PREFIX}/customer/{replacement}", headers=headers)
    assert created.status_code == 200, created.text
    before = await state_of(served, headers, EXISTING)
    replaced_before = await state_of(served, headers, replacement)
    url = f"{PREFIX}/customer/{encoded}"

    if operation == "get":
        response = await served.get(url, headers=headers)
    elif operation == "delete":
        response = await served.delete(url, headers=headers)
    elif operation == "create":
        response = await served.post(url, json={"startPoints": {"points": 10}}, headers=headers)
    else:
        response = await served.post(f"{url}/{operation}", json={"points": 10}, headers=headers)

    assert_refused(response, 400, mentions=["UTF-8"])
    await assert_unchanged(served, headers, EXISTING, before)
    assert await state_of(served, headers, replacement) == replaced_before


@pytest.mark.slow
@pytest.mark.parametrize("operation", ["addPoints", "redeemPoints", "create", "get", "delete"])
async def test_nul_in_the_path_is_refused_behind_the_real_server(
    served: httpx.AsyncClient, headers: Headers, operation: str
) -> None:
    """test_bad_input.py sends %00 in-process; here uvicorn decodes the path."""
    await seed(served, headers)
    before = await state_of(served, headers, EXISTING)
    url = f"{PREFIX}/customer/{EXISTING}%00"

    if operation == "get":
        response = await served.get(url, headers=headers)
    elif operation == "delete":
        response = await served.delete(url, headers=headers)
    elif operation == "create":
        response = await served.post(url, json={"startPoints": {"points": 10}}, headers=headers)
    else:
        response = await served.post(f"{url}/{operation}", json={"points": 10}, headers=headers)

    assert_refused(response, 400, mentions=["customerId", "NUL"])
    await assert_unchanged(served, headers, EXISTING, before)


# ---- NUL and invalid UTF-8 in JSON strings ---------------------------------------------------

# Bytes as they go on the wire. A raw control character or a byte that is not UTF-8 makes the
# JSON malformed; an escaped unpaired surrogate is well-formed JSON but no text a database or a
# UTF-8 response can hold.
RAW_STRINGS = {
    "raw-nul": b"a\x00b",
    "raw-ff": b"a\xffb",
    "overlong-encoding": b"a\xc0\xafb",
    "utf8-encoded-surrogate": b"a\xed\xa0\x80b",
    "escaped-unpaired-high-surrogate": b"a\\ud800b",
    "escaped-unpaired-low-surrogate": b"a\\udc00b",
    "escaped-reversed-pair": b"\\udc00\\ud800",
}
STRING_FIELDS = {
    "id": {"addPoints", "redeemPoints", "create"},
    "description": {"addPoints", "redeemPoints", "create"},
    "reference-id": {"addPoints", "create"},
    "usedWith": {"addPoints", "create"},
}


def lot_with(field: str, text: bytes) -> bytes:
    value = b"[" + b'"' + text + b'"' + b"]" if field == "usedWith" else b'"' + text + b'"'
    return b'{"points": 10, "' + field.encode() + b'": ' + value + b"}"


@pytest.mark.parametrize("text", RAW_STRINGS.values(), ids=RAW_STRINGS.keys())
@pytest.mark.parametrize(
    ("target", "field"),
    [
        pytest.param(target, field, id=f"{field}-{target}")
        for field, targets in STRING_FIELDS.items()
        for target in TARGETS
        if target in targets
    ],
)
async def test_string_that_is_not_valid_text_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, target: str, field: str, text: bytes
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)
    body = lot_with(field, text)
    if operation == "create":
        body = b'{"startPoints": ' + body + b"}"

    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        content=body,
        headers={**headers, "Content-Type": "application/json"},
    )

    assert_refused(response, 400, instance=path_of(operation, customer_id))
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_nul_in_a_redeem_option_id_is_refused(
    client: httpx.AsyncClient, headers: Headers, tenant: str, method: str
) -> None:
    options = f"{PREFIX}/{tenant}/redeemOptions"
    before = await client.get(options, headers=headers)
    assert before.status_code == 200, before.text

    response = await client.request(
        method,
        f"{options}/opt%00x",
        json={"type": "coupon", "name": "n", "points": 5} if method == "PUT" else None,
        headers=headers,
    )

    assert_refused(response, 400, mentions=["redeemOptionId", "NUL"])
    assert (await client.get(options, headers=headers)).json() == before.json()


def option_with_coupon_field(value: bytes) -> bytes:
    """A redeem option whose coupon carries a field this service keeps and passes on."""
    return (
        b'{"type": "coupon", "name": "10 off", "points": 5, "coupon": {"name": "c", '
        b'"discountType": "PERCENT", "discountPercentage": 10, "extra": ' + value + b"}}"
    )


COUPON_FIELDS = {
    "escaped-nul": b'"a\\u0000b"',
    "escaped-unpaired-surrogate": b'"a\\ud800b"',
    "surrogate-in-a-member-name": b'{"a\\ud800": 1}',
    "nan": b"NaN",
    "infinity": b"-Infinity",
    "overflowing-number": b"1e400",
    # With the coupon itself as the first level: one level deeper than allowed.
    f"nested-{MAX_JSON_DEPTH + 1}-levels": b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
    "nested-500-levels": b"[" * 500 + b"]" * 500,
    "nested-5000-levels": b"[" * 5000 + b"]" * 5000,
}


@pytest.mark.parametrize("value", COUPON_FIELDS.values(), ids=COUPON_FIELDS.keys())
async def test_coupon_field_that_cannot_be_stored_is_refused(
    client: httpx.AsyncClient, headers: Headers, tenant: str, value: bytes
) -> None:
    options = f"{PREFIX}/{tenant}/redeemOptions"
    # A field nested exactly as deep as allowed (the coupon itself is the first level) is kept.
    deepest = b"[" * (MAX_JSON_DEPTH - 2) + b'[1, "two"]' + b"]" * (MAX_JSON_DEPTH - 2)
    kept = await client.post(
        options,
        content=option_with_coupon_field(deepest),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert kept.status_code == 200, kept.text
    before = (await client.get(options, headers=headers)).json()

    response = await client.post(
        options,
        content=option_with_coupon_field(value),
        headers={**headers, "Content-Type": "application/json"},
    )

    assert_refused(response, 400, instance=f"/{tenant}/redeemOptions")
    after = await client.get(options, headers=headers)
    assert after.status_code == 200, after.text
    assert after.json() == before


# ---- dates at the edges of years 1 and 9999 --------------------------------------------------

# test_bad_input.py covers validUntil in year 1 (also just before UTC) and accepts
# 9999-12-31T23:59:59Z. Here: the other ends, and createdAt, which is parsed although ignored.
OUT_OF_RANGE_DATES = {
    "year-1-east-of-utc": "0001-01-01T00:00:00+14:00",
    "year-9999-west-of-utc": "9999-12-31T23:59:59-14:00",
    "year-9999-one-minute-west": "9999-12-31T23:59:00-00:01",
    "year-0": "0000-01-01T00:00:00Z",
    "year-10000": "10000-01-01T00:00:00Z",
    "expanded-year": "+10000-01-01T00:00:00Z",
    "negative-year": "-0001-01-01T00:00:00Z",
}


@pytest.mark.parametrize("date", OUT_OF_RANGE_DATES.values(), ids=OUT_OF_RANGE_DATES.keys())
@pytest.mark.parametrize(
    ("target", "field"),
    [
        pytest.param("addPoints", "validUntil", id="validUntil-addPoints"),
        pytest.param("create", "validUntil", id="validUntil-create"),
        pytest.param("addPoints", "createdAt", id="createdAt-addPoints"),
        pytest.param("redeemPoints", "createdAt", id="createdAt-redeemPoints"),
        pytest.param("create", "createdAt", id="createdAt-create"),
    ],
)
async def test_date_outside_years_1_to_9999_in_utc_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, target: str, field: str, date: str
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)

    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        json=lot_body(operation, {"points": 10, field: date}),
        headers=headers,
    )

    assert_refused(response, 400, instance=path_of(operation, customer_id), mentions=[field])
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize(
    "date",
    ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59.999999Z"],
)
async def test_created_at_at_the_edges_is_read_and_ignored(
    client: httpx.AsyncClient, headers: Headers, date: str
) -> None:
    added = await client.post(
        f"{PREFIX}/customer/edge/addPoints",
        json={"points": 10, "createdAt": date},
        headers=headers,
    )
    assert added.status_code == 201, added.text
    redeemed = await client.post(
        f"{PREFIX}/customer/edge/redeemPoints",
        json={"points": 4, "createdAt": date},
        headers=headers,
    )
    assert redeemed.status_code == 201, redeemed.text

    summary = (await client.get(f"{PREFIX}/customer/edge/summary", headers=headers)).json()
    [lot] = summary["summary"]["addedPointsList"]
    [redemption] = summary["summary"]["redeemedPointsList"]
    # The server's clock, not the request's: neither year 1 nor year 9999.
    for entry in (lot, redemption):
        assert not entry["createdAt"].startswith(("0001-", "9999-")), entry
    assert summary["activePoints"] == 6


async def test_coupon_dates_outside_years_1_to_9999_in_utc_are_refused(
    client: httpx.AsyncClient, headers: Headers, tenant: str
) -> None:
    options = f"{PREFIX}/{tenant}/redeemOptions"
    for field in ("validFrom", "validUntil"):
        for date in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "10000-01-01"):
            option = {
                "type": "coupon",
                "name": "n",
                "points": 5,
                "coupon": {
                    "name": "c",
                    "discountType": "PERCENT",
                    "discountPercentage": 10,
                    "restrictions": {field: date},
                },
            }
            response = await client.post(options, json=option, headers=headers)
            assert_refused(response, 400, instance=f"/{tenant}/redeemOptions", mentions=[field])
    assert (await client.get(options, headers=headers)).json() == []


# ---- deeply nested JSON ----------------------------------------------------------------------


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("target", TARGETS)
async def test_body_of_100000_open_brackets_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, app: Any, target: str
) -> None:
    """100 KB: over the body limit, refused before it is parsed."""
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)

    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        content=b"[" * 100_000,
        headers={**headers, "Content-Type": "application/json"},
    )

    limit = app.state.settings.max_body_bytes
    assert_refused(response, 413, instance=path_of(operation, customer_id), mentions=[str(limit)])
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize("target", TARGETS)
async def test_body_nested_past_the_recursion_limit_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, app: Any, target: str
) -> None:
    """Within the body limit, but far deeper than Python's json can read (RecursionError)."""
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)
    levels = app.state.settings.max_body_bytes // 2 - 1

    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        content=nested(levels),
        headers={**headers, "Content-Type": "application/json"},
    )

    assert_refused(
        response, 400, instance=path_of(operation, customer_id), mentions=["JSON", "deeply"]
    )
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize("field", ["description", "id", "usedWith", "allPointsAfterCreation"])
@pytest.mark.parametrize("target", TARGETS)
async def test_field_nested_5000_levels_deep_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, target: str, field: str
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)
    body = b'{"points": 10, "' + field.encode() + b'": ' + nested(5000) + b"}"
    if operation == "create":
        body = b'{"startPoints": ' + body + b"}"

    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        content=body,
        headers={**headers, "Content-Type": "application/json"},
    )

    assert_refused(
        response, 400, instance=path_of(operation, customer_id), mentions=["JSON", "deeply"]
    )
    await assert_unchanged(client, headers, customer_id, before)


# ---- huge arrays in usedWith -----------------------------------------------------------------


def used_with_filling(limit: int, operation: str) -> bytes:
    """A lot whose usedWith holds as many one-character ids as fit within ``limit`` bytes."""
    head = b'{"points": 10, "usedWith": ['
    tail = b"]}"
    if operation == "create":
        head, tail = b'{"startPoints": ' + head, tail + b"}"
    room = limit - len(head) - len(tail)
    count = (room + 1) // 4  # '"a",' per id, the last without its comma
    body = head + b",".join([b'"a"'] * count) + tail
    assert len(body) <= limit and count > MAX_USED_WITH
    return body


@pytest.mark.parametrize("target", ["addPoints", "create"])
async def test_used_with_over_1000_entries_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, headers: Headers, app: Any, target: str
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)
    bodies: list[str | bytes] = [
        json.dumps(lot_body(operation, {"points": 10, "usedWith": ["x"] * (MAX_USED_WITH + 1)})),
        used_with_filling(app.state.settings.max_body_bytes, operation),
    ]

    for body in bodies:
        response = await client.post(
            PREFIX + path_of(operation, customer_id),
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert_refused(
            response,
            400,
            instance=path_of(operation, customer_id),
            mentions=["usedWith", str(MAX_USED_WITH)],
        )
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize("target", ["addPoints", "create"])
async def test_used_with_of_1000_entries_is_accepted_and_ignored(
    client: httpx.AsyncClient, headers: Headers, target: str
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)

    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        json=lot_body(operation, {"id": "many", "points": 10, "usedWith": ["x"] * MAX_USED_WITH}),
        headers=headers,
    )

    assert response.status_code == (200 if operation == "create" else 201), response.text
    summary = (await client.get(f"{PREFIX}/customer/{customer_id}/summary", headers=headers)).json()
    [lot] = [lot for lot in summary["summary"]["addedPointsList"] if lot["id"] == "many"]
    assert lot["usedWith"] == []
    assert lot["usedPoints"] == 0


# ---- a trailing slash: never a redirect ------------------------------------------------------

NOT_FOUND = {"type": "resource_not_found", "status": 404, "message": "Not Found"}
HOSTILE_HOST = "evil.example"


def every_route_with_a_trailing_slash(app: Any) -> list[tuple[str, str]]:
    """(method, path) for each method of each route of ``app``, those of the routers it
    includes too, its parameters filled in and a slash added to its path."""
    routes: list[Any] = []
    for route in app.routes:
        included = getattr(route, "original_router", None)
        routes += included.routes if included is not None else [route]
    return sorted(
        (method, re.sub(r"\{[^}]+\}", "c1", route.path) + "/")
        for route in routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    )


def assert_not_found_without_redirect(response: httpx.Response, method: str, path: str) -> None:
    assert response.status_code == 404, (method, path, response.status_code, response.headers)
    assert "location" not in response.headers, (method, path, response.headers)
    assert response.json() == NOT_FOUND, (method, path)


async def test_a_trailing_slash_is_the_404_of_an_unknown_path_never_a_redirect(
    app: Any, client: httpx.AsyncClient, headers: Headers
) -> None:
    """Starlette would redirect ``/customer/c1/`` to ``/customer/c1`` on the host the request's
    Host header names, with no token checked: the service then sends clients where an attacker
    says. Every route, every method, with a hostile Host, with a token and without."""
    await seed(client, headers)
    cases = every_route_with_a_trailing_slash(app)
    assert ("GET", f"{PREFIX}/customer/c1/") in cases
    assert ("POST", f"{PREFIX}/customer/c1/addPoints/") in cases
    assert len(cases) >= 20

    unknown = await client.get(f"{PREFIX}/nothing-here", headers={"Host": HOSTILE_HOST})
    assert_not_found_without_redirect(unknown, "GET", f"{PREFIX}/nothing-here")
    for method, path in cases:
        for credentials in ({}, headers):
            body = None if method == "GET" else {"points": 5}
            response = await client.request(
                method, path, json=body, headers={**credentials, "Host": HOSTILE_HOST}
            )
            assert_not_found_without_redirect(response, method, path)
    assert (await client.get(f"{PREFIX}/customer/{EXISTING}", headers=headers)).json() == 70


@pytest.mark.slow
@pytest.mark.parametrize("credentials", [False, True], ids=["no-token", "token"])
async def test_a_trailing_slash_behind_the_real_server_is_a_404(
    server: str, headers: Headers, credentials: bool
) -> None:
    parts = urlsplit(server)
    authorization = f"Authorization: {headers['Authorization']}\r\n" if credentials else ""
    for path in (f"{PREFIX}/customer/c1/", f"{PREFIX}/summaryBatch/", "/health/ready/"):
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOSTILE_HOST}\r\n{authorization}"
            "Connection: close\r\n\r\n"
        ).encode()
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as conn:
            conn.sendall(request)
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 "), (path, head)
        assert b"\r\nlocation:" not in head.lower(), (path, head)
        assert json.loads(body) == NOT_FOUND
