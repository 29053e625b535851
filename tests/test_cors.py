"""CORS for the origins in REWARDPOINTS_CORS_ORIGINS: preflights for every route (the fast
lane's too), the headers on every answer, errors and 500s included, and nothing at all for an
origin not on the list, a request without an Origin, or when the setting is empty. In-process
through the ASGI app; tests/test_storefront_browser.py shows the same in a real browser."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from rewardpoints.app import create_app
from rewardpoints.config import Settings

from .conftest import bearer, make_settings, token
from .support import FakeClock

Headers = dict[str, str]

SHOP = "https://shop.example.com"
OTHER = "https://evil.example.net"
STOREFRONT_HEADERS = (
    "authorization,content-type,accept-language,content-language,idempotency-key,"
    "emporix-tenant,x-request-id"
)
# Every route, by a concrete path, with its methods; the first three are the fast lane's.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/reward-points/customer/c1"),
    ("POST", "/reward-points/customer/c1/addPoints"),
    ("POST", "/reward-points/customer/c1/redeemPoints"),
    ("POST", "/reward-points/customer/c1"),
    ("DELETE", "/reward-points/customer/c1"),
    ("GET", "/reward-points/customer/c1/summary"),
    ("GET", "/reward-points/summaryBatch"),
    ("POST", "/reward-points/customer/c1/orders"),
    ("GET", "/reward-points/public/customer"),
    ("GET", "/reward-points/public/customer/summary"),
    ("GET", "/reward-points/public/customer/redeemOptions"),
    ("POST", "/reward-points/public/customer/redeem"),
    ("GET", "/reward-points/public/customer/coupons"),
    ("GET", "/reward-points/TENANT/redeemOptions"),
    ("POST", "/reward-points/TENANT/redeemOptions"),
    ("PUT", "/reward-points/TENANT/redeemOptions/0123456789abcdef01234567"),
    ("DELETE", "/reward-points/TENANT/redeemOptions/0123456789abcdef01234567"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
]


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # A 500 is raised on to the server after its answer, as uvicorn gets it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
    await app.state.ledger.engine.dispose()


@pytest.fixture(params=[True, False], ids=["fast lane", "routes only"])
async def shop(
    request: pytest.FixtureRequest, database_url: str, clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    """The service with CORS for SHOP (and another origin), the fast lane on or off."""
    configured = make_settings(
        database_url, cors_origins=f"{SHOP},https://www.example.com", fast_lane=request.param
    )
    async for client in _client(create_app(configured, clock=clock)):
        yield client


@pytest.fixture
async def plain(settings: Settings, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    """The service as configured by default: no CORS."""
    assert settings.cors_origins == ""
    async for client in _client(create_app(settings, clock=clock)):
        yield client


def preflight(origin: str, method: str) -> Headers:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": STOREFRONT_HEADERS,
    }


async def test_every_route_answers_a_preflight_from_a_configured_origin(
    shop: httpx.AsyncClient, plain: httpx.AsyncClient, tenant: str
) -> None:
    for method, path in ROUTES:
        url = path.replace("TENANT", tenant)
        response = await shop.options(url, headers=preflight(SHOP, method))
        assert response.status_code == 200, (method, path, response.text)
        headers = cors_headers(response)
        assert headers["access-control-allow-origin"] == SHOP
        assert method in headers["access-control-allow-methods"].split(", ")
        allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
        assert set(STOREFRONT_HEADERS.split(",")) <= allowed
        assert headers["access-control-max-age"] == "7200"
        assert "access-control-allow-credentials" not in headers
        # Without CORS, the same preflight is the 405 it always was, with no CORS header.
        before = await plain.options(url, headers=preflight(SHOP, method))
        assert before.status_code == 405, (method, path)
        assert cors_headers(before) == {}


async def test_answers_to_a_configured_origin_carry_the_cors_headers(
    shop: httpx.AsyncClient, tenant: str
) -> None:
    employee = {**bearer(token(tenant)), "Origin": SHOP}
    added = await shop.post(
        "/reward-points/customer/c1/addPoints", json={"points": 10}, headers=employee
    )
    # The token is known now: the fast lane, where it is on, answers the balance.
    balance = await shop.get("/reward-points/customer/c1", headers=employee)
    live = await shop.get("/health/live", headers={"Origin": SHOP})

    assert added.status_code == 201, added.text
    assert balance.json() == 10
    for response in (added, balance, live):
        headers = cors_headers(response)
        assert headers["access-control-allow-origin"] == SHOP
        exposed = headers["access-control-expose-headers"].split(", ")
        assert {"Retry-After", "Location", "X-Request-ID", "ETag"} <= set(exposed)
        assert "access-control-allow-credentials" not in headers
        assert "Origin" in response.headers["vary"]


async def _errors(client: httpx.AsyncClient, tenant: str) -> dict[int, httpx.Response]:
    """One answer of each error status the service gives a storefront's kind of request."""
    origin = {"Origin": SHOP}
    employee = {**bearer(token(tenant)), **origin}
    viewer = {**bearer(token(tenant, ("rewardspoints.rewardpoints_view",))), **origin}
    seeded = await client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 10}, headers=employee
    )
    assert seeded.status_code == 201, seeded.text
    url = "/reward-points/customer/c1/redeemPoints"
    return {
        400: await client.post(url, json={"points": 11}, headers=employee),
        401: await client.get("/reward-points/customer/c1", headers=origin),
        403: await client.post(url, json={"points": 1}, headers=viewer),
        404: await client.get("/reward-points/customer/nobody", headers=employee),
        405: await client.put(url, headers=employee),
        409: await client.post("/reward-points/customer/c1", headers=employee),
        413: await client.post(url, content=b"x" * 70_000, headers=employee),
        414: await client.get("/reward-points/customer/" + "c" * 9000, headers=employee),
        415: await client.post(url, content=b'{"points": 1}', headers=employee),
        431: await client.get(
            "/reward-points/customer/c1", headers={**employee, "X-Padding": "p" * 17_000}
        ),
    }


async def test_error_answers_carry_the_cors_headers_too(
    shop: httpx.AsyncClient, tenant: str
) -> None:
    for status, response in (await _errors(shop, tenant)).items():
        assert response.status_code == status, (status, response.text)
        assert response.headers["access-control-allow-origin"] == SHOP, status
        assert "Retry-After" in response.headers["access-control-expose-headers"], status
        assert response.json(), status  # the body a storefront reads


async def test_unavailable_database_and_unexpected_errors_carry_the_cors_headers() -> None:
    closed = make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none", cors_origins=SHOP)
    app = create_app(closed)

    async def fail() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/reward-points/boom", fail)
    async for client in _client(app):
        unavailable = await client.get("/health/ready", headers={"Origin": SHOP})
        assert unavailable.status_code == 503
        assert unavailable.headers["access-control-allow-origin"] == SHOP
        assert unavailable.headers["retry-after"] == "1"
        assert "Retry-After" in unavailable.headers["access-control-expose-headers"]
        failed = await client.get("/reward-points/boom", headers={"Origin": SHOP})
        assert failed.status_code == 500
        assert failed.headers["access-control-allow-origin"] == SHOP
        assert failed.json()["error"] == "Internal Server Error"


async def test_an_origin_not_on_the_list_gets_no_cors_headers(
    shop: httpx.AsyncClient, plain: httpx.AsyncClient, tenant: str
) -> None:
    for method, path in ROUTES:
        url = path.replace("TENANT", tenant)
        response = await shop.options(url, headers=preflight(OTHER, method))
        assert response.status_code == 405, (method, path, response.text)
        assert cors_headers(response) == {}
    employee = {**bearer(token(tenant)), "Origin": OTHER}
    for client in (shop, plain):
        added = await client.post(
            "/reward-points/customer/c1/addPoints", json={"points": 10}, headers=employee
        )
        balance = await client.get("/reward-points/customer/c1", headers=employee)
        assert balance.status_code == 200
        for response in (added, balance):
            assert cors_headers(response) == {}
        # The configured service's answers vary by Origin, for caches.
        assert ("Origin" in balance.headers.get("vary", "")) == (client is shop)


async def test_requests_without_an_origin_and_the_unset_setting_change_nothing(
    shop: httpx.AsyncClient, plain: httpx.AsyncClient, tenant: str
) -> None:
    employee = bearer(token(tenant))
    for client in (shop, plain):
        added = await client.post(
            "/reward-points/customer/c1/addPoints", json={"points": 10}, headers=employee
        )
        assert added.status_code == 201
        balance = await client.get("/reward-points/customer/c1", headers=employee)
        assert cors_headers(balance) == {}
        assert "vary" not in balance.headers
    # And the unset setting adds nothing even for a browser's request.
    for status, response in (await _errors(plain, tenant + "x")).items():
        assert response.status_code == status, (status, response.text)
        assert cors_headers(response) == {}, status
    # ... which the configured service answers with CORS headers: the setting is what differs.
    preflighted = await shop.options(
        "/reward-points/public/customer", headers=preflight(SHOP, "GET")
    )
    assert preflighted.status_code == 200


@pytest.mark.parametrize(
    ("configured", "origin", "allowed"),
    [
        ("*", "https://anything.example.org", "*"),
        ("https://Shop.Example.com:443", SHOP, SHOP),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
async def test_any_origin_and_origins_written_as_browsers_send_them(
    database_url: str, tenant: str, configured: str, origin: str, allowed: str
) -> None:
    app = create_app(make_settings(database_url, cors_origins=configured))
    async for client in _client(app):
        response = await client.get(
            "/reward-points/public/customer/redeemOptions",
            headers={**bearer(token(tenant, customer_id="c1")), "Origin": origin},
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-credentials" not in response.headers


def test_settings_read_the_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDPOINTS_CORS_ORIGINS", f" {SHOP} , https://www.example.com,")
    read = Settings(_env_file=None)  # type: ignore[call-arg]
    assert read.cors_allowed_origins == (SHOP, "https://www.example.com")
