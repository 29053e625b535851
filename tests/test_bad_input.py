"""Malformed and out-of-range requests: a 400 (413 for an oversized body) in the problem shape of
CONTRACT.md section 4, and no change to any data. A database that cannot be reached is a 503,
never a 500 with a stack trace. FastAPI's default 422 never appears."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from rewardpoints.app import create_app

from .conftest import bearer, fresh_database, make_settings, served, token
from .support import FakeClock, connect, free_port

PREFIX = "/reward-points"
MAX_POINTS = 2_147_483_647
EXISTING = "c-existing"
NEW = "c-new"

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}
TOO_LARGE_TITLES = {"Request Entity Too Large", "Content Too Large", "Payload Too Large"}
SERVER_ERROR_KEYS = {"timestamp", "status", "error", "path"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")

Body = dict[str, Any]
Fragment = Body | Callable[[FakeClock], Body]


async def _refuse_422_and_tracebacks(response: httpx.Response) -> None:
    await response.aread()
    assert response.status_code != 422, f"FastAPI's default 422 leaked: {response.text}"
    assert "Traceback" not in response.text, response.text
    assert 'File "' not in response.text, response.text


@pytest.fixture
def client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The shared client, checking every response of this file for a 422 or a stack trace."""
    client.event_hooks["response"].append(_refuse_422_and_tracebacks)
    return client


# ---- helpers ---------------------------------------------------------------------------------


def path_of(operation: str, customer_id: str) -> str:
    """The path without the /reward-points prefix, as `instance` names it."""
    if operation == "create":
        return f"/customer/{customer_id}"
    return f"/customer/{customer_id}/{operation}"


def assert_problem(
    response: httpx.Response,
    *,
    instance: str | Iterable[str],
    mentions: Iterable[str] = (),
    status: int = 400,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert PROBLEM_KEYS <= body.keys() <= PROBLEM_KEYS | {"errors"}, body
    assert body["type"] == "about:blank"
    if status == 400:
        assert body["title"] == "Bad Request"
    else:
        assert body["title"] in TOO_LARGE_TITLES
    assert body["status"] == status
    allowed = {instance} if isinstance(instance, str) else set(instance)
    assert body["instance"] in allowed, body["instance"]
    detail = body["detail"]
    assert isinstance(detail, str) and detail
    for word in mentions:
        assert re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", detail), (
            f"detail {detail!r} does not mention {word!r}"
        )
    for problem in body.get("errors", []):
        assert problem.keys() == {"field", "message"}, problem
    return body


@dataclass(frozen=True)
class State:
    summary: tuple[int, Any]
    balance: tuple[int, Any]
    batch: tuple[int, Any]


async def state_of(client: httpx.AsyncClient, headers: dict[str, str], customer_id: str) -> State:
    summary = await client.get(f"{PREFIX}/customer/{customer_id}/summary", headers=headers)
    balance = await client.get(f"{PREFIX}/customer/{customer_id}", headers=headers)
    batch = await client.get(f"{PREFIX}/summaryBatch", headers=headers)
    return State(
        (summary.status_code, summary.json()),
        (balance.status_code, balance.json()),
        (batch.status_code, batch.json()),
    )


async def seed(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """EXISTING holds one lot of 100 with 30 of it redeemed; NEW has no entry."""
    added = await client.post(
        f"{PREFIX}/customer/{EXISTING}/addPoints",
        json={"id": "lot-1", "reference-id": "order-1", "points": 100},
        headers=headers,
    )
    assert added.status_code == 201, added.text
    redeemed = await client.post(
        f"{PREFIX}/customer/{EXISTING}/redeemPoints",
        json={"id": "redemption-1", "points": 30},
        headers=headers,
    )
    assert redeemed.status_code == 201, redeemed.text


async def assert_unchanged(
    client: httpx.AsyncClient, headers: dict[str, str], customer_id: str, before: State
) -> None:
    after = await state_of(client, headers, customer_id)
    assert after == before
    if customer_id == NEW:
        assert after.summary[0] == 404
        assert after.balance[0] == 404
    else:
        assert after.balance == (200, 70)


# Where a request goes: (operation, customer). create's body carries the lot as startPoints.
TARGETS = {
    "addPoints-existing": ("addPoints", EXISTING),
    "addPoints-new": ("addPoints", NEW),
    "redeemPoints": ("redeemPoints", EXISTING),
    "create": ("create", NEW),
}


# ---- bodies that are not a JSON object ----------------------------------------------------

RAW_BODIES: list[tuple[str, bytes | None, tuple[str, ...], set[str]]] = [
    ("malformed-json", b'{"points": 10', ("JSON",), set(TARGETS)),
    ("array", b"[]", ("object",), set(TARGETS)),
    ("number", b"5", ("object",), set(TARGETS)),
    ("string", b'"x"', ("object",), set(TARGETS)),
    # POST /customer/{id} takes an optional body: no body, or JSON null, creates the entry.
    ("null", b"null", ("object",), set(TARGETS) - {"create"}),
    ("empty", b"", ("body",), set(TARGETS) - {"create"}),
    ("absent", None, ("body",), set(TARGETS) - {"create"}),
]


@pytest.mark.parametrize(
    ("target", "raw", "mentions"),
    [
        pytest.param(target, raw, mentions, id=f"{name}-{target}")
        for name, raw, mentions, targets in RAW_BODIES
        for target in TARGETS
        if target in targets
    ],
)
async def test_body_that_is_not_a_json_object_is_rejected_and_changes_nothing(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    target: str,
    raw: bytes | None,
    mentions: tuple[str, ...],
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)

    request_headers = dict(headers)
    if raw is not None:
        request_headers["Content-Type"] = "application/json"
    response = await client.post(
        PREFIX + path_of(operation, customer_id), content=raw, headers=request_headers
    )

    assert_problem(response, instance=path_of(operation, customer_id), mentions=mentions)
    await assert_unchanged(client, headers, customer_id, before)


# ---- fields out of range or of the wrong type ------------------------------------------------

ALL = frozenset({"addPoints", "redeemPoints", "create"})
LOTS = frozenset({"addPoints", "create"})


def _just_past(clock: FakeClock) -> Body:
    return {"points": 10, "validUntil": (clock.now - timedelta(seconds=1)).isoformat()}


def _exactly_now(clock: FakeClock) -> Body:
    # The FakeClock moves on by 1 ms at each reading; the ledger reads it once per command,
    # so this is the very instant the command runs at.
    return {"points": 10, "validUntil": (clock.now + timedelta(milliseconds=1)).isoformat()}


@dataclass(frozen=True)
class FieldCase:
    name: str
    body: Fragment
    mentions: tuple[str, ...]
    operations: frozenset[str]


FIELD_CASES = [
    FieldCase("points-missing", {"description": "no points"}, ("points", "required"), ALL),
    FieldCase("points-fraction", {"points": 1.5}, ("points", "integer"), ALL),
    FieldCase("points-numeric-string", {"points": "10"}, ("points", "integer"), ALL),
    FieldCase("points-boolean", {"points": True}, ("points", "integer"), ALL),
    FieldCase("points-null", {"points": None}, ("points",), ALL),
    FieldCase("points-zero", {"points": 0}, ("points", "1"), ALL),
    FieldCase("points-negative", {"points": -5}, ("points", "1"), ALL),
    FieldCase("points-above-int32", {"points": MAX_POINTS + 1}, ("points", str(MAX_POINTS)), ALL),
    FieldCase("points-huge", {"points": 10**30}, ("points", str(MAX_POINTS)), ALL),
    FieldCase("validUntil-past", _just_past, ("validUntil", "future"), LOTS),
    FieldCase("validUntil-now", _exactly_now, ("validUntil", "future"), LOTS),
    FieldCase(
        "validUntil-not-a-date", {"points": 10, "validUntil": "tomorrow"}, ("validUntil",), LOTS
    ),
    FieldCase(
        "validUntil-epoch-number", {"points": 10, "validUntil": 4102444800}, ("validUntil",), LOTS
    ),
    FieldCase(
        "validUntil-year-1",
        {"points": 10, "validUntil": "0001-01-01T00:00:00Z"},
        ("validUntil",),
        LOTS,
    ),
    FieldCase(
        "validUntil-year-1-before-utc",
        {"points": 10, "validUntil": "0001-01-01T00:00:00+01:00"},
        ("validUntil",),
        LOTS,
    ),
    FieldCase("id-empty", {"points": 10, "id": ""}, ("id",), ALL),
    FieldCase("id-256-chars", {"points": 10, "id": "i" * 256}, ("id", "255"), ALL),
    FieldCase("id-nul", {"points": 10, "id": "lot\x00x"}, ("id", "NUL"), ALL),
    FieldCase("id-number", {"points": 10, "id": 7}, ("id",), ALL),
    FieldCase(
        "description-4097-chars",
        {"points": 10, "description": "d" * 4097},
        ("description", "4096"),
        ALL,
    ),
    FieldCase(
        "description-nul", {"points": 10, "description": "a\x00b"}, ("description", "NUL"), ALL
    ),
    FieldCase(
        "reference-id-nul", {"points": 10, "reference-id": "o\x00x"}, ("reference-id", "NUL"), LOTS
    ),
    FieldCase(
        "reference-id-256-chars",
        {"points": 10, "reference-id": "r" * 256},
        ("reference-id", "255"),
        LOTS,
    ),
    FieldCase("usedWith-string", {"points": 10, "usedWith": "x"}, ("usedWith",), LOTS),
    FieldCase("usedPoints-string", {"points": 10, "usedPoints": "x"}, ("usedPoints",), LOTS),
    FieldCase(
        "allPointsAfterCreation-string",
        {"points": 10, "allPointsAfterCreation": "x"},
        ("allPointsAfterCreation",),
        ALL,
    ),
    FieldCase(
        "createdAt-not-a-date", {"points": 10, "createdAt": "yesterday"}, ("createdAt",), ALL
    ),
]


@pytest.mark.parametrize(
    ("target", "case"),
    [
        pytest.param(target, case, id=f"{case.name}-{target}")
        for case in FIELD_CASES
        for target, (operation, _) in TARGETS.items()
        if operation in case.operations
    ],
)
async def test_invalid_field_is_rejected_and_changes_nothing(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    clock: FakeClock,
    target: str,
    case: FieldCase,
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)

    fragment = case.body(clock) if callable(case.body) else case.body
    body = {"startPoints": fragment} if operation == "create" else fragment
    response = await client.post(
        PREFIX + path_of(operation, customer_id), json=body, headers=headers
    )

    assert_problem(response, instance=path_of(operation, customer_id), mentions=case.mentions)
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize("target", ["addPoints-existing", "addPoints-new", "create"])
async def test_unknown_site_code_is_rejected_by_name_and_changes_nothing(
    client: httpx.AsyncClient, headers: dict[str, str], target: str
) -> None:
    operation, customer_id = TARGETS[target]
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)

    body: Body = {"points": 10}
    if operation == "create":
        body = {"startPoints": body}
    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        params={"siteCode": "unknown"},
        json=body,
        headers=headers,
    )

    assert_problem(
        response, instance=path_of(operation, customer_id), mentions=("siteCode", "unknown")
    )
    await assert_unchanged(client, headers, customer_id, before)


async def test_start_points_that_are_not_an_object_are_rejected(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await seed(client, headers)
    before = await state_of(client, headers, NEW)

    response = await client.post(
        f"{PREFIX}/customer/{NEW}", json={"startPoints": 5}, headers=headers
    )

    assert_problem(response, instance=f"/customer/{NEW}", mentions=("startPoints",))
    await assert_unchanged(client, headers, NEW, before)


# ---- the edges that are accepted ------------------------------------------------------------


async def test_points_of_exactly_2147483647_are_accepted(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    added = await client.post(
        f"{PREFIX}/customer/big/addPoints", json={"points": MAX_POINTS}, headers=headers
    )
    assert added.status_code == 201, added.text
    assert (await client.get(f"{PREFIX}/customer/big", headers=headers)).json() == MAX_POINTS

    redeemed = await client.post(
        f"{PREFIX}/customer/big/redeemPoints", json={"points": MAX_POINTS}, headers=headers
    )
    assert redeemed.status_code == 201, redeemed.text
    assert (await client.get(f"{PREFIX}/customer/big", headers=headers)).json() == 0

    created = await client.post(
        f"{PREFIX}/customer/big-start",
        json={"startPoints": {"points": MAX_POINTS}},
        headers=headers,
    )
    assert created.status_code == 200, created.text
    assert (await client.get(f"{PREFIX}/customer/big-start", headers=headers)).json() == MAX_POINTS


async def test_valid_until_in_year_9999_is_accepted(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    far = {"points": 10, "validUntil": "9999-12-31T23:59:59Z"}
    added = await client.post(f"{PREFIX}/customer/far/addPoints", json=far, headers=headers)
    assert added.status_code == 201, added.text
    created = await client.post(
        f"{PREFIX}/customer/far-start", json={"startPoints": far}, headers=headers
    )
    assert created.status_code == 200, created.text

    for customer_id in ("far", "far-start"):
        summary = (
            await client.get(f"{PREFIX}/customer/{customer_id}/summary", headers=headers)
        ).json()
        assert summary["activePoints"] == 10
        [lot] = summary["summary"]["addedPointsList"]
        assert lot["validUntil"] == "9999-12-31T23:59:59.000+00:00"


async def test_customer_id_of_255_characters_is_accepted(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    customer_id = "c" * 255
    base = f"{PREFIX}/customer/{customer_id}"

    created = await client.post(base, json={"startPoints": {"points": 50}}, headers=headers)
    assert created.status_code == 200, created.text
    added = await client.post(f"{base}/addPoints", json={"points": 10}, headers=headers)
    assert added.status_code == 201, added.text
    redeemed = await client.post(f"{base}/redeemPoints", json={"points": 15}, headers=headers)
    assert redeemed.status_code == 201, redeemed.text
    assert (await client.get(base, headers=headers)).json() == 45
    summary = (await client.get(f"{base}/summary", headers=headers)).json()
    assert summary["customerId"] == customer_id
    assert summary["activePoints"] == 45

    deleted = await client.delete(base, headers=headers)
    assert deleted.status_code == 200, deleted.text
    assert (await client.get(base, headers=headers)).status_code == 404


# ---- the customer id in the path --------------------------------------------------------------

PATH_REQUESTS: list[tuple[str, str, Body | None]] = [
    ("GET", "", None),
    ("GET", "/summary", None),
    ("POST", "", {"startPoints": {"points": 10}}),
    ("DELETE", "", None),
    ("POST", "/addPoints", {"points": 10}),
    ("POST", "/redeemPoints", {"points": 10}),
]


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [pytest.param(m, s, b, id=f"{m} {s or '/'}") for m, s, b in PATH_REQUESTS],
)
async def test_customer_id_over_255_characters_is_rejected(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    method: str,
    suffix: str,
    body: Body | None,
) -> None:
    await seed(client, headers)
    customer_id = "c" * 256
    before = await state_of(client, headers, EXISTING)

    response = await client.request(
        method, f"{PREFIX}/customer/{customer_id}{suffix}", json=body, headers=headers
    )

    assert_problem(
        response, instance=f"/customer/{customer_id}{suffix}", mentions=("customerId", "255")
    )
    await assert_unchanged(client, headers, EXISTING, before)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [pytest.param(m, s, b, id=f"{m} {s or '/'}") for m, s, b in PATH_REQUESTS],
)
async def test_nul_in_customer_id_is_rejected(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    method: str,
    suffix: str,
    body: Body | None,
) -> None:
    await seed(client, headers)
    before = await state_of(client, headers, EXISTING)

    response = await client.request(
        method, f"{PREFIX}/customer/c%00x{suffix}", json=body, headers=headers
    )

    # The path as the server decoded it, or as it was sent.
    instances = {f"/customer/c\x00x{suffix}", f"/customer/c%00x{suffix}"}
    assert_problem(response, instance=instances, mentions=("customerId", "NUL"))
    await assert_unchanged(client, headers, EXISTING, before)


# ---- the size of the body ---------------------------------------------------------------------


def padded(body: Body, size: int) -> bytes:
    """Valid JSON of exactly ``size`` bytes: ``body`` followed by spaces."""
    encoded = json.dumps(body).encode()
    assert len(encoded) <= size
    return encoded + b" " * (size - len(encoded))


class Chunks:
    """A body sent in pieces without a Content-Length (httpx sends it chunked)."""

    def __init__(self, data: bytes, piece: int = 4096) -> None:
        self.data = data
        self.piece = piece
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.piece):
            chunk = self.data[start : start + self.piece]
            self.sent += len(chunk)
            yield chunk


def valid_body(operation: str) -> Body:
    return {"startPoints": {"points": 10}} if operation == "create" else {"points": 10}


BODY_TARGETS = ["addPoints-existing", "redeemPoints", "create"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("target", BODY_TARGETS)
async def test_body_over_the_limit_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    app: Any,
    target: str,
    chunked: bool,
) -> None:
    operation, customer_id = TARGETS[target]
    limit: int = app.state.settings.max_body_bytes
    await seed(client, headers)
    before = await state_of(client, headers, customer_id)

    # Valid JSON that would succeed but for its size: one byte over, then far over.
    for size in (limit + 1, 4 * limit):
        data = padded(valid_body(operation), size)
        content: bytes | Chunks = Chunks(data) if chunked else data
        request_headers = {**headers, "Content-Type": "application/json"}
        response = await client.post(
            PREFIX + path_of(operation, customer_id), content=content, headers=request_headers
        )
        if chunked:
            assert "content-length" not in response.request.headers
            assert response.request.headers["transfer-encoding"] == "chunked"
            # Refused without reading (and buffering) much past the limit.
            assert isinstance(content, Chunks)
            assert content.sent <= limit + content.piece
        else:
            assert response.request.headers["content-length"] == str(size)

        status = response.status_code if response.status_code in (400, 413) else 413
        assert_problem(
            response,
            instance=path_of(operation, customer_id),
            mentions=(str(limit),),
            status=status,
        )
    await assert_unchanged(client, headers, customer_id, before)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("target", BODY_TARGETS)
async def test_body_of_exactly_the_limit_is_accepted(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    app: Any,
    target: str,
    chunked: bool,
) -> None:
    operation, customer_id = TARGETS[target]
    limit: int = app.state.settings.max_body_bytes
    await seed(client, headers)

    data = padded(valid_body(operation), limit)
    response = await client.post(
        PREFIX + path_of(operation, customer_id),
        content=Chunks(data) if chunked else data,
        headers={**headers, "Content-Type": "application/json"},
    )

    assert response.status_code == (200 if operation == "create" else 201), response.text
    expected = {"addPoints": 80, "redeemPoints": 60, "create": 10}[operation]
    balance = await client.get(f"{PREFIX}/customer/{customer_id}", headers=headers)
    assert balance.json() == expected


# ---- a database that cannot be reached ---------------------------------------------------------

UNREACHABLE_REQUESTS: list[tuple[str, str, Body | None]] = [
    ("GET", "/summaryBatch", None),
    ("GET", "/customer/c1", None),
    ("GET", "/customer/c1/summary", None),
    ("POST", "/customer/c1/addPoints", {"points": 10}),
    ("POST", "/customer/c1/redeemPoints", {"points": 10}),
    ("POST", "/customer/c1", {"startPoints": {"points": 10}}),
    ("DELETE", "/customer/c1", None),
]


def assert_unavailable(response: httpx.Response, path: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.keys() == SERVER_ERROR_KEYS, body
    assert body["status"] == 503
    assert body["error"] == "Service Unavailable"
    assert body["path"] == path
    assert TIMESTAMP.fullmatch(body["timestamp"]), body["timestamp"]


@pytest.mark.parametrize("fault", ["nothing listens", "no such database", "no such role"])
async def test_unreachable_database_answers_503_without_a_stack_trace(
    tenant: str, pg_server_url: str, fault: str
) -> None:
    """The server is not there, or refuses the service's connections: its database was
    dropped (or not created yet), its role (or password) is not the server's."""
    server = make_url(pg_server_url)
    name = f"rp_missing_{secrets.token_hex(4)}"
    url = {
        "nothing listens": server.set(port=free_port()),
        "no such database": server.set(database=name),
        "no such role": server.set(username=name),
    }[fault].render_as_string(hide_password=False)
    app = create_app(make_settings(url))
    headers = bearer(token(tenant))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            event_hooks={"response": [_refuse_422_and_tracebacks]},
        ) as client:
            for method, path, body in UNREACHABLE_REQUESTS:
                response = await client.request(method, PREFIX + path, json=body, headers=headers)
                assert_unavailable(response, path)

            assert_unavailable(await client.get("/health/ready"), "/health/ready")
            live = await client.get("/health/live")
            assert live.status_code == 200, live.text
    finally:
        await app.state.ledger.engine.dispose()


@pytest.fixture
def own_database(pg_server_url: str) -> Iterator[str]:
    """A database of this test's own, which it may set read-only."""
    with fresh_database(pg_server_url) as url:
        yield url


async def test_a_read_only_database_answers_writes_503_and_still_serves_reads(
    tenant: str, own_database: str
) -> None:
    """A database that takes no writes (a standby, or one set read-only for maintenance):
    every write answers 503 with Retry-After and changes nothing; reads are served."""
    headers = bearer(token(tenant))
    async with served(own_database) as client:
        funded = await client.post(
            f"{PREFIX}/customer/c1/addPoints", json={"points": 30}, headers=headers
        )
        assert funded.status_code == 201
    conn = await connect(own_database)
    try:
        name = make_url(own_database).database
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await conn.close()
    async with served(own_database) as client:  # its connections are new: read-only
        for method, path, body in READ_ONLY_WRITES:
            response = await client.request(method, PREFIX + path, json=body, headers=headers)
            assert_unavailable(response, path)
            assert response.headers["Retry-After"] == "1"
        keyed = await client.post(
            f"{PREFIX}/customer/c1/addPoints",
            json={"points": 5},
            headers={**headers, "Idempotency-Key": "read-only"},
        )
        assert_unavailable(keyed, "/customer/c1/addPoints")
        assert (await client.get(f"{PREFIX}/customer/c1", headers=headers)).json() == 30
        summary = await client.get(f"{PREFIX}/customer/c1/summary", headers=headers)
        assert summary.status_code == 200
        assert len(summary.json()["summary"]["addedPointsList"]) == 1
        assert (await client.get(f"{PREFIX}/customer/c2", headers=headers)).status_code == 404


READ_ONLY_WRITES: list[tuple[str, str, Body | None]] = [
    ("POST", "/customer/c1/addPoints", {"points": 10}),
    ("POST", "/customer/c1/addPoints", {"points": 10, "id": "lot-2"}),
    ("POST", "/customer/c1/redeemPoints", {"points": 10}),
    ("POST", "/customer/c2", {"startPoints": {"points": 10}}),
    ("DELETE", "/customer/c1", None),
]
