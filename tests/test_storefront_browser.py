"""A storefront's page on another origin calls the service from a real headless Chromium, as
Emporix's storefront does: the signed-in customer's balance, the redeem options rendered as
cards, a redeem that returns a coupon code, the balance after it, and the error body of a
redeem without enough points. From an origin in REWARDPOINTS_CORS_ORIGINS the page reads all
of it; from any other it reads nothing, and no redeem happens."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from .conftest import TEST_SECRET, bearer, fresh_database, token
from .support import running_server
from .test_swagger_ui import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

pytestmark = pytest.mark.browser

TENANT = "storefront"
CUSTOMER = "shopper-1"
START_POINTS = 150

# The storefront's calls, with its headers, read the way its pages read them.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Storefront</title></head><body>
<div id="cards"></div>
<script>
async function call(api, token, method, path, body) {
  const headers = {
    "Authorization": "Bearer " + token,
    "Accept-Language": "de",
    "Content-Language": "de",
  };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const response = await fetch(api + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    return {status: response.status, body: await response.json()};
  } catch (error) {
    return {error: String(error)};
  }
}

async function storefront(api, token) {
  const result = {};
  result.balance = await call(api, token, "GET", "/reward-points/public/customer");
  const options = await call(api, token, "GET", "/reward-points/public/customer/redeemOptions");
  result.options = options;
  if (options.body) {
    result.cards = options.body.map((option) => ({
      name: option.name,
      description: option.description,
      points: option.points,
      type: option.coupon.discountType,
      value: option.coupon.discountType === "ABSOLUTE"
        ? `${option.coupon.discountAbsolute.amount} ${option.coupon.discountAbsolute.currency}`
        : `${option.coupon.discountPercentage} %`,
    }));
    document.getElementById("cards").textContent = JSON.stringify(result.cards);
  }
  const [cheap, dear] = options.body ? options.body : [{id: "x"}, {id: "y"}];
  result.redeem = await call(
    api, token, "POST", "/reward-points/public/customer/redeem?siteCode=main", {id: cheap.id});
  result.balanceAfter = await call(api, token, "GET", "/reward-points/public/customer");
  result.refused = await call(
    api, token, "POST", "/reward-points/public/customer/redeem?siteCode=main", {id: dear.id});
  return result;
}
</script>
</body></html>
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """The storefront's page, served from a loopback port of its own: another origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Shop:
    api: str
    allowed_page: str
    other_page: str
    employee: dict[str, str]


@pytest.fixture(scope="module")
def shop(pg_server_url: str) -> Iterator[Shop]:
    with contextlib.ExitStack() as stack:
        allowed_page = stack.enter_context(page_server())
        other_page = stack.enter_context(page_server())
        database_url = stack.enter_context(fresh_database(pg_server_url))
        env = {
            "REWARDPOINTS_DATABASE_URL": database_url,
            "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
            "REWARDPOINTS_CORS_ORIGINS": f"https://shop.example.com,{allowed_page}",
        }
        api = stack.enter_context(running_server(env))
        employee = bearer(token(TENANT))
        seeded = httpx.post(
            f"{api}/reward-points/customer/{CUSTOMER}/addPoints",
            json={"points": START_POINTS},
            headers=employee,
        )
        assert seeded.status_code == 201, seeded.text
        for option in (
            {
                "type": "coupon",
                "name": "10 Euro Gutschein",
                "description": "Für 90 Punkte",
                "points": 90,
                "coupon": {
                    "name": "10 Euro",
                    "discountType": "ABSOLUTE",
                    "discountAbsolute": {"amount": 10, "currency": "EUR"},
                },
            },
            {
                "type": "coupon",
                "name": "Zehn Prozent",
                "description": "Für 100 Punkte",
                "points": 100,
                "coupon": {"name": "10 %", "discountType": "PERCENT", "discountPercentage": 10},
            },
        ):
            created = httpx.post(
                f"{api}/reward-points/{TENANT}/redeemOptions", json=option, headers=employee
            )
            assert created.status_code == 200, created.text
        yield Shop(api, allowed_page, other_page, employee)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def run_storefront(browser: Browser, page_url: str, api: str) -> dict[str, Any]:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(page_url, wait_until="load")
        result: dict[str, Any] = page.evaluate(
            "([api, token]) => storefront(api, token)",
            [api, token(TENANT, (), customer_id=CUSTOMER)],
        )
        return result
    finally:
        page.close()


def summary(shop: Shop) -> dict[str, Any]:
    response = httpx.get(
        f"{shop.api}/reward-points/customer/{CUSTOMER}/summary", headers=shop.employee
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_storefront_on_an_allowed_origin_reads_and_redeems_and_another_origin_nothing(
    shop: Shop, browser: Browser
) -> None:
    before = summary(shop)

    # From an origin not on the list: every call fails in the page, and nothing is spent.
    elsewhere = run_storefront(browser, shop.other_page, shop.api)

    for step in ("balance", "options", "redeem", "balanceAfter", "refused"):
        assert elsewhere[step] == {"error": "TypeError: Failed to fetch"}, (step, elsewhere[step])
    assert "cards" not in elsewhere
    assert summary(shop) == before

    # From the storefront's origin: everything its pages show.
    points = before["activePoints"]
    result = run_storefront(browser, shop.allowed_page, shop.api)

    assert result["balance"] == {"status": 200, "body": points}
    assert result["cards"] == [
        {
            "name": "10 Euro Gutschein",
            "description": "Für 90 Punkte",
            "points": 90,
            "type": "ABSOLUTE",
            "value": "10 EUR",
        },
        {
            "name": "Zehn Prozent",
            "description": "Für 100 Punkte",
            "points": 100,
            "type": "PERCENT",
            "value": "10 %",
        },
    ]
    assert result["redeem"]["status"] == 200, result["redeem"]
    assert result["redeem"]["body"]["code"].startswith("RP-")
    assert result["balanceAfter"] == {"status": 200, "body": points - 90}
    # The error body reaches the page: the storefront can say why.
    refused = result["refused"]
    assert refused["status"] == 400, refused
    assert refused["body"]["detail"] == (
        f"Not enough reward points: requested 100, available {points - 90}"
    )
    assert summary(shop)["activePoints"] == points - 90
