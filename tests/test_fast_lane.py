"""The fast lane (api/fastlane.py) answers plain balance, addPoints and redeemPoints requests
without FastAPI's routes, and must answer every request exactly as the routes do.

The same requests go to two applications on the same database, one with the fast lane and one
without, each for a tenant of its own and with a clock of its own started at the same instant:
the answers, and then each customer's summary, must be the same, once the tenant's name and the
ids the server makes up are put aside.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from starlette.types import Message

from rewardpoints.api.deps import get_documents, get_ledger
from rewardpoints.app import create_app
from rewardpoints.config import Settings

from .conftest import MANAGE, VIEW, bearer, token
from .support import FakeClock

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMESTAMP_FIELD = re.compile(r'"timestamp":"[^"]*"')


class Lane:
    """One application and the tenant it serves in a comparison."""

    def __init__(self, client: httpx.AsyncClient, tenant: str) -> None:
        self.client = client
        self.tenant = tenant

    async def send(self, request: Callable[[str], dict[str, Any]]) -> httpx.Response:
        return await self.client.request(**request(self.tenant))


@pytest.fixture
def start() -> FakeClock:
    return FakeClock()


async def _lane(settings: Settings, start: FakeClock, tenant: str) -> AsyncIterator[Lane]:
    app = create_app(settings, clock=FakeClock(start.now))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Lane(client, tenant)
    await app.state.ledger.engine.dispose()


@pytest.fixture
async def fast(settings: Settings, start: FakeClock, tenant: str) -> AsyncIterator[Lane]:
    assert settings.fast_lane
    async for lane in _lane(settings, start, tenant + "f"):
        yield lane


@pytest.fixture
async def slow(settings: Settings, start: FakeClock, tenant: str) -> AsyncIterator[Lane]:
    off = settings.model_copy(update={"fast_lane": False})
    async for lane in _lane(off, start, tenant + "s"):
        yield lane


class Normaliser:
    """Makes two answers comparable: the tenant's name, the server's UUIDs (numbered in the
    order they appear) and the timestamps of 5xx bodies, which are the wall clock's."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.ids: dict[str, str] = {}

    def text(self, text: str) -> str:
        text = text.replace(self.tenant, "TENANT")
        text = TIMESTAMP_FIELD.sub('"timestamp":"T"', text)
        return UUID.sub(lambda match: self.ids.setdefault(match[0], f"id-{len(self.ids)}"), text)

    def response(self, response: httpx.Response) -> tuple[int, dict[str, str], str]:
        # A generated request id differs per request; that both lanes send one is compared.
        headers = {
            name: "ID" if name == "x-request-id" else value
            for name, value in response.headers.items()
            if name != "content-length"
        }
        return response.status_code, headers, self.text(response.text)


def req(
    method: str,
    path: str,
    *,
    scopes: tuple[str, ...] = (VIEW, MANAGE),
    auth: Callable[[str], dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Callable[[str], dict[str, Any]]:
    """A request for a tenant: ``path`` under /reward-points, the tenant's token unless ``auth``
    builds other headers; "{tenant}" in a header value stands for the tenant."""

    def build(tenant: str) -> dict[str, Any]:
        sent = auth(tenant) if auth is not None else bearer(_token(tenant, scopes))
        for name, value in (headers or {}).items():
            sent[name] = value.replace("{tenant}", tenant)
        # A callable argument is called for each request (a body stream can be sent once).
        made = {name: value() if callable(value) else value for name, value in kwargs.items()}
        return {"method": method, "url": "/reward-points" + path, "headers": sent, **made}

    return build


_tokens: dict[tuple[str, tuple[str, ...]], str] = {}


def _token(tenant: str, scopes: tuple[str, ...]) -> str:
    """One token per tenant and scopes, so that after its first use it is a known token."""
    return _tokens.setdefault((tenant, scopes), token(tenant, scopes))


FUTURE = "2099-01-01T00:00:00Z"
LONG_ID = "x" * 255


def _requests() -> Iterator[Callable[[str], dict[str, Any]]]:
    add = "/customer/{}/addPoints"
    redeem = "/customer/{}/redeemPoints"
    # The first use of the token, then the same requests with it known.
    for _ in range(2):
        yield req("GET", "/customer/c1")
        yield req("POST", add.format("c1"), json={"points": 10})
        yield req("GET", "/customer/c1")
    yield req(
        "POST",
        add.format("c1"),
        json={
            "id": "lot-a",
            "reference-id": "order-1",
            "description": "welcome",
            "points": 50,
            "validUntil": FUTURE,
            "createdAt": "2020-01-01T00:00:00Z",
            "usedPoints": 3,
            "usedWith": ["x"],
            "unknown": True,
        },
    )
    yield req("POST", add.format("c1"), json={"id": "lot-a", "points": 50, "validUntil": FUTURE})
    yield req(
        "POST",
        add.format("c1"),
        json={"id": "lot-a", "reference-id": "order-1", "description": "welcome", "points": 50},
    )
    yield req("POST", add.format("c1"), json={"points": 5, "validUntil": "2000-01-01T00:00:00Z"})
    for points in (0, -1, "10", 1.5, True, None, 2**31, [1]):
        yield req("POST", add.format("c1"), json={"points": points})
        yield req("POST", redeem.format("c1"), json={"points": points})
    yield req("POST", add.format("c1"), json={})
    yield req("POST", add.format("c1"), json=[{"points": 1}])
    yield req("POST", add.format("c1"), json={"points": 1, "description": "a\x00b"})
    yield req("POST", add.format("c1"), json={"points": 1, "id": ""})
    yield req("POST", add.format("c1"), json={"points": 1, "validUntil": "tomorrow"})
    for content in (b"", b"{", b'{"points": 1', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        yield req(
            "POST",
            redeem.format("c1"),
            content=content,
            headers={"Content-Type": "application/json"},
        )
    # Bodies that are JSON only by another content type, or none.
    for content_type in (
        "text/plain",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "APPLICATION/JSON",
    ):
        yield req(
            "POST",
            add.format("c1"),
            content=b'{"points": 2}',
            headers={"Content-Type": content_type},
        )
    yield req("POST", add.format("c1"), content=b'{"points": 2}')
    # Redemptions: plain, too many, a retry, a conflict, an unknown customer.
    yield req("POST", redeem.format("c1"), json={"points": 7})
    yield req("POST", redeem.format("c1"), json={"points": 10_000})
    yield req("POST", redeem.format("c1"), json={"id": "red-a", "points": 4, "description": "d"})
    yield req("POST", redeem.format("c1"), json={"id": "red-a", "points": 4, "description": "d"})
    yield req("POST", redeem.format("c1"), json={"id": "red-a", "points": 5})
    yield req("POST", redeem.format("nobody"), json={"points": 1})
    yield req("GET", "/customer/c1")
    # What the fast lane leaves to the routes.
    yield req("POST", add.format("c2"), json={"points": 3}, headers={"Idempotency-Key": "k1"})
    yield req("POST", add.format("c2"), json={"points": 3}, headers={"Idempotency-Key": "k1"})
    yield req("POST", add.format("c2"), json={"points": 4}, headers={"Idempotency-Key": "k1"})
    yield req("POST", add.format("c2") + "?siteCode=main", json={"points": 1})
    yield req("POST", add.format("c2") + "?siteCode=elsewhere", json={"points": 1})
    yield req("GET", "/customer/c2?unused=1")
    yield req("GET", "/customer/c2", headers={"Emporix-Tenant": "{tenant}"})
    yield req("POST", add.format("c2"), json={"points": 1}, headers={"Emporix-Tenant": "{tenant}"})
    yield req("GET", "/customer/c2", headers={"Emporix-Tenant": "someone"})
    yield req("POST", add.format("c2"), json={"points": 1}, headers={"Emporix-Tenant": "x"})
    # Tokens the routes refuse, twice each: the second time the token has been verified.
    for _ in range(2):
        yield req("GET", "/customer/c2", scopes=(MANAGE,))
        yield req("POST", add.format("c2"), json={"points": 1}, scopes=(VIEW,))
        yield req(
            "POST", redeem.format("c2"), json={"points": 1}, scopes=("saasag.rewardpoints_manage",)
        )
        yield req("GET", "/customer/c2", scopes=("saasag.rewardpoints_view",))
        yield req("GET", "/customer/c2", auth=_customer_token)
        yield req("POST", add.format("c2"), json={"points": 1}, auth=_customer_token)
        yield req("GET", "/customer/c2", auth=lambda tenant: {})
        yield req("GET", "/customer/c2", auth=lambda tenant: {"Authorization": "Bearer nonsense"})
        yield req("GET", "/customer/c2", auth=lambda tenant: {"Authorization": "Bearer "})
        yield req(
            "GET",
            "/customer/c2",
            auth=lambda tenant: {"Authorization": "bearer " + _token(tenant, (VIEW, MANAGE))},
        )
        yield req(
            "GET",
            "/customer/c2",
            auth=lambda tenant: {"Authorization": "Bearer  " + _token(tenant, (VIEW, MANAGE))},
        )
        yield req(
            "GET",
            "/customer/c2",
            auth=lambda tenant: {"Authorization": "Basic " + _token(tenant, (VIEW, MANAGE))},
        )
        yield _duplicate_authorization
    # JSON nested up to the limit and past it, also where Python's parser would run out of
    # stack at different depths on the two paths.
    for depth in (126, 127, 128, 129, 500, 960, 965, 970, 5000):
        deep = b'{"points":1,"x":' + b"[" * depth + b"]" * depth + b"}"
        for path in (add.format("c3"), redeem.format("c3")):
            yield req("POST", path, content=deep, headers={"Content-Type": "application/json"})
        yield req("POST", add.format("c3"), content=deep, headers={"Idempotency-Key": f"d{depth}"})
    # A GET with a body: read, and refused when too large, as by the routes.
    yield req("GET", "/customer/c1", content=b"ignored")
    yield req("GET", "/customer/c1", content=b"[" * 200)
    yield req("GET", "/customer/c1", content=b"x" * 70_000)
    yield req("GET", "/customer/c1", content=lambda: _chunks(b"x" * 40_000, b"x" * 40_000))
    # Limits: body, headers, path.
    yield req("POST", add.format("c2"), json={"points": 1, "description": "d" * 70_000})
    yield req("GET", "/customer/c2", headers={"X-Padding": "p" * 17_000})
    yield req("GET", "/customer/" + "y" * 9000)
    yield req("GET", "/customer/%ff%fe")
    # Customer ids at and past their limits, and paths near the fast lane's.
    yield req("POST", add.format(LONG_ID), json={"points": 1})
    yield req("GET", "/customer/" + LONG_ID)
    yield req("GET", "/customer/" + LONG_ID + "z")
    yield req("POST", add.format(LONG_ID + "z"), json={"points": 1})
    yield req("POST", add.format("k%C3%B8"), json={"points": 6})
    yield req("GET", "/customer/k%C3%B8")
    yield req("GET", "/customer/k%00")
    yield req("POST", add.format("k%00"), json={"points": 1})
    yield req("GET", "/customer/a%2Fb")
    yield req("GET", "/customer/c1/")
    yield req("GET", "/customer/")
    yield req("GET", "/customer//addPoints")
    yield req("POST", "/customer//addPoints", json={"points": 1})
    yield req("POST", "/customer/c1/addPoints/", json={"points": 1})
    yield req("POST", "/customer/c1/otherPoints", json={"points": 1})
    yield req("POST", "/customer/c1", json={"customerId": "c1"})
    yield req("GET", "/customer/c1/addPoints")
    yield req("PUT", add.format("c1"), json={"points": 1})
    yield req("HEAD", "/customer/c1")
    yield req("GET", "/customer/redeemOptions")
    yield req("GET", "/customer/c1/summary")


def _customer_token(tenant: str) -> dict[str, str]:
    key = (tenant, ("customerId=c2",))
    return bearer(_tokens.setdefault(key, token(tenant, (VIEW, MANAGE), customer_id="c2")))


def _duplicate_authorization(tenant: str) -> dict[str, Any]:
    known = _token(tenant, (VIEW, MANAGE))
    return {
        "method": "GET",
        "url": "/reward-points/customer/c1",
        "headers": [("Authorization", "Bearer nonsense"), ("Authorization", f"Bearer {known}")],
    }


async def test_every_request_is_answered_as_the_routes_answer_it(
    fast: Lane, slow: Lane, start: FakeClock
) -> None:
    fast_names, slow_names = Normaliser(fast.tenant), Normaliser(slow.tenant)
    for number, request in enumerate(_requests()):
        fast_answer = fast_names.response(await fast.send(request))
        slow_answer = slow_names.response(await slow.send(request))
        assert fast_answer == slow_answer, (number, request(fast.tenant))

    for customer in ("c1", "c2", "c3", LONG_ID, "k%C3%B8"):
        summary = req("GET", f"/customer/{customer}/summary")
        fast_summary = await fast.send(summary)
        slow_summary = await slow.send(summary)
        assert fast_summary.status_code == 200, customer
        assert fast_names.text(fast_summary.text) == slow_names.text(slow_summary.text)
    # The comparison covered real ledgers: points were added, redeemed and refused.
    c1 = json.loads((await fast.send(req("GET", "/customer/c1/summary"))).text)
    # 2 x 10, lot-a's 50, 2 points under each of the three JSON content types; 7 and 4 spent.
    assert c1["activePoints"] == 10 + 10 + 50 + 3 * 2 - 7 - 4
    assert len(c1["summary"]["redeemedPointsList"]) == 2
    # JSON nested 128 levels is read (the object and 127 arrays), 129 is not.
    c3 = json.loads((await fast.send(req("GET", "/customer/c3/summary"))).text)
    assert c3["activePoints"] == 2 - 2
    assert [lot["points"] for lot in c3["summary"]["addedPointsList"]] == [1, 1]


async def test_expired_and_unknown_tokens_are_refused_as_by_the_routes(
    fast: Lane, slow: Lane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token verified once and expired since is not answered from what was remembered."""
    short = {
        tenant: bearer(token(tenant, (VIEW, MANAGE), ttl_seconds=60))
        for tenant in (fast.tenant, slow.tenant)
    }
    # Every lane's tenant is a key of ``short``: its get never answers None here.
    short_auth = cast(Callable[[str], dict[str, str]], short.get)
    answers = []
    for lane in (fast, slow):
        first = await lane.send(
            req("POST", "/customer/c1/addPoints", auth=short_auth, json={"points": 1})
        )
        assert first.status_code == 201
        answers.append(await lane.send(req("GET", "/customer/c1", auth=short_auth)))
    assert [answer.text for answer in answers] == ["1", "1"]
    later = time.time() + 3600
    monkeypatch.setattr("rewardpoints.auth.time.time", lambda: later)
    for lane in (fast, slow):
        for request in (
            req("GET", "/customer/c1", auth=short_auth),
            req("POST", "/customer/c1/redeemPoints", auth=short_auth, json={"points": 1}),
        ):
            refused = await lane.send(request)
            assert refused.status_code == 401
            assert refused.json()["fault"]["faultstring"] == "Invalid access token"
    balance = await fast.send(req("GET", "/customer/c1"))
    assert balance.text == "1"


@pytest.fixture
async def routes_refusing(settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """The fast lane in front of routes that fail with 500 whenever they are reached."""
    app = create_app(settings, clock=clock)

    async def no_ledger() -> None:
        raise RuntimeError("the route was reached")

    app.dependency_overrides[get_ledger] = no_ledger
    app.dependency_overrides[get_documents] = no_ledger
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await app.state.ledger.engine.dispose()


async def test_plain_requests_with_a_known_token_never_reach_the_routes(
    routes_refusing: httpx.AsyncClient, tenant: str
) -> None:
    client, headers = routes_refusing, bearer(token(tenant))
    add = "/reward-points/customer/c1/addPoints"
    # The token's first use is verified by the route's dependencies, which reach the ledger.
    assert (await client.post(add, json={"points": 5}, headers=headers)).status_code == 500
    assert (await client.post(add, json={"points": 5}, headers=headers)).status_code == 201
    redeem = "/reward-points/customer/c1/redeemPoints"
    assert (await client.post(redeem, json={"points": 2}, headers=headers)).status_code == 201
    balance = await client.get("/reward-points/customer/c1", headers=headers)
    assert (balance.status_code, balance.text) == (200, "3")
    refused = await client.post(redeem, json={"points": 9}, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["detail"] == "Not enough reward points: requested 9, available 3"
    missing = await client.get("/reward-points/customer/c9", headers=headers)
    assert missing.status_code == 404
    # Not plain: a siteCode, an Idempotency-Key, a summary.
    with_site = await client.post(add + "?siteCode=main", json={"points": 1}, headers=headers)
    assert with_site.status_code == 500
    keyed = await client.post(add, json={"points": 1}, headers={**headers, "Idempotency-Key": "k"})
    assert keyed.status_code == 500
    summary = await client.get("/reward-points/customer/c1/summary", headers=headers)
    assert summary.status_code == 500


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_sent_in_pieces_reaches_the_routes_whole(fast: Lane, slow: Lane) -> None:
    """What the fast lane read of a body it does not answer is handed on with the rest."""
    pieces = (b'{"poi', b'nts": ', b'"7"}')
    valid = (b'{"poi', b'nts": ', b"7}")
    oversized = (b'{"points": 1, "description": "', b"d" * 40_000, b"d" * 40_000, b'"}')
    for lane in (fast, slow):
        for parts, status in ((pieces, 400), (valid, 201), (oversized, 413)):
            answer = await lane.client.post(
                "/reward-points/customer/c1/addPoints",
                content=_chunks(*parts),
                headers={
                    **bearer(_token(lane.tenant, (VIEW, MANAGE))),
                    "Content-Type": "application/json",
                },
            )
            assert answer.status_code == status, (lane.tenant, parts[:1], answer.text)
    invalid = await fast.client.post(
        "/reward-points/customer/c1/addPoints",
        content=_chunks(*pieces),
        headers={**bearer(_token(fast.tenant, (VIEW, MANAGE))), "Content-Type": "application/json"},
    )
    assert invalid.json()["detail"] == "points: Input should be a valid integer"
    assert (await fast.send(req("GET", "/customer/c1"))).text == "7"


async def test_a_client_gone_before_its_body_ends_changes_nothing(
    settings: Settings, clock: FakeClock, tenant: str
) -> None:
    app = create_app(settings, clock=clock)
    headers = bearer(token(tenant))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        add = "/reward-points/customer/c1/addPoints"
        assert (await client.post(add, json={"points": 5}, headers=headers)).status_code == 201
        sent: list[Message] = []
        messages: list[Message] = [
            {"type": "http.request", "body": b'{"points":', "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> Message:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": add,
            "raw_path": add.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", headers["Authorization"].encode()),
                (b"content-type", b"application/json"),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)
        assert sent == []
        assert (await client.get("/reward-points/customer/c1", headers=headers)).text == "5"
    await app.state.ledger.engine.dispose()


def test_the_fast_lane_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDPOINTS_FAST_LANE", "false")
    assert Settings(_env_file=None).fast_lane is False  # type: ignore[call-arg]
    monkeypatch.delenv("REWARDPOINTS_FAST_LANE")
    assert Settings(_env_file=None).fast_lane is True  # type: ignore[call-arg]


async def test_switched_off_every_request_reaches_the_routes(
    settings: Settings, clock: FakeClock, tenant: str
) -> None:
    """What the comparisons above compare against: without the fast lane, plain requests with
    a known token are the routes' to answer too."""
    app = create_app(settings.model_copy(update={"fast_lane": False}), clock=clock)
    reached: list[str] = []
    ledger = app.state.ledger

    async def recorded() -> Any:
        reached.append("route")
        return ledger

    app.dependency_overrides[get_ledger] = recorded
    headers = bearer(token(tenant))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        add = "/reward-points/customer/c1/addPoints"
        for _ in range(2):
            assert (await client.post(add, json={"points": 5}, headers=headers)).status_code == 201
        balance = await client.get("/reward-points/customer/c1", headers=headers)
        assert (balance.status_code, balance.text) == (200, "10")
    await ledger.engine.dispose()
    assert reached == ["route"] * 3


@pytest.mark.parametrize("failure", [RuntimeError("boom"), OSError("network down")])
async def test_an_unexpected_error_is_answered_as_by_the_routes(
    settings: Settings, start: FakeClock, tenant: str, failure: Exception
) -> None:
    """An error no handler expects is a 500 (an OSError a 503), without a stack trace, on
    both paths; the error still reaches the server's log, as from a route."""
    answers = []
    for fast_lane in (True, False):
        app = create_app(settings.model_copy(update={"fast_lane": fast_lane}), clock=start)

        async def fail(*_: Any, **__: Any) -> int:
            raise failure

        app.state.ledger.balance = fail
        app.state.ledger.redeem_points = fail
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            headers = bearer(_token(tenant, (VIEW, MANAGE)))
            for _ in range(2):  # the second time with a known token
                for method, path, body in (
                    ("GET", "/reward-points/customer/c1", None),
                    ("POST", "/reward-points/customer/c1/redeemPoints", {"points": 1}),
                ):
                    answer = await client.request(method, path, json=body, headers=headers)
                    answers.append((fast_lane, answer))
        await app.state.ledger.engine.dispose()
    status = 503 if isinstance(failure, OSError) else 500
    for _, answer in answers:
        assert answer.status_code == status
        body = answer.json()
        assert set(body) == {"timestamp", "status", "error", "path"}
        assert body["status"] == status
        assert "Traceback" not in answer.text and "boom" not in answer.text
    fast_bodies = [Normaliser(tenant).text(a.text) for lane, a in answers if lane]
    slow_bodies = [Normaliser(tenant).text(a.text) for lane, a in answers if not lane]
    assert fast_bodies == slow_bodies
