"""What an operator does in Swagger UI at /docs, in a real headless Chromium against a real
``rewardpoints serve``: the page renders from the service's own assets (no CDN), the Authorize
button takes the token printed by ``rewardpoints token``, and "Try it out" calls the API."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from .conftest import TEST_SECRET, fresh_database
from .support import running_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCOPES = "rewardspoints.rewardpoints_view rewardspoints.rewardpoints_manage"
TENANT = "swaggerui"
CUSTOMER = "cust-4711"
POINTS = 1234
# Swagger UI's deep-link id: "operations-<tag, spaces as underscores>-<operationId>".
GET_BALANCE = "#operations-Reward_Points_Management-GET-reward-points-fetch-customer-reward-points"
TIMEOUT_MS = 10_000


@dataclass
class Service:
    base: str
    token: str


def cli_token(env: dict[str, str], cwd: Path) -> str:
    """The token exactly as an operator gets it: ``rewardpoints token`` on the command line."""
    result = subprocess.run(
        [sys.executable, "-m", "rewardpoints", "token", "--tenant", TENANT, "--scope", SCOPES],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


@pytest.fixture(scope="module")
def service(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real server on a fresh PostgreSQL database, with one customer holding POINTS."""
    directory = tmp_path_factory.mktemp("swagger-ui")
    with fresh_database(pg_server_url) as database_url:
        env = {"REWARDPOINTS_DATABASE_URL": database_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
        with running_server(env) as base:
            token = cli_token(env, directory)
            seeded = httpx.post(
                f"{base}/reward-points/customer/{CUSTOMER}/addPoints",
                json={"points": POINTS},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert seeded.status_code == 201, seeded.text
            yield Service(base, token)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Traffic:
    """Every request a page makes, and every one that failed."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.failed: list[str] = []
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("requestfailed", self._on_failed)

    def _on_failed(self, request: Request) -> None:
        self.failed.append(f"{request.method} {request.url}: {request.failure}")

    def foreign(self) -> list[str]:
        return [url for url in self.urls if urlsplit(url).hostname != "127.0.0.1"]


def open_docs(browser: Browser, base: str) -> tuple[Page, Traffic]:
    """/docs in a fresh browser context: no authorization persisted from another page."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(TIMEOUT_MS)
    traffic = Traffic(page)
    page.goto(f"{base}/docs", wait_until="networkidle")
    return page, traffic


def try_get_balance(page: Page, customer_id: str) -> tuple[str, str]:
    """Expand GET /reward-points/customer/{customerId}, Try it out, Execute; return the status
    code and body Swagger UI shows for the live response."""
    operation = page.locator(GET_BALANCE)
    operation.locator(".opblock-summary").first.click()
    operation.locator("button.try-out__btn").click()
    operation.locator('input[placeholder="customerId"]').fill(customer_id)
    operation.locator("button.execute").click()
    live = operation.locator(".live-responses-table .response")
    expect(live.locator(".response-col_status")).to_be_visible()
    status = live.locator(".response-col_status").inner_text().strip()
    body = live.locator(".response-col_description pre").first.inner_text().strip()
    return status, body


def assert_only_loopback_and_nothing_failed(traffic: Traffic) -> None:
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in traffic.urls)
    assert any(url.endswith("/docs/assets/swagger-ui.css") for url in traffic.urls)
    assert any(url.endswith("/openapi.json") for url in traffic.urls)
    assert traffic.foreign() == []
    assert traffic.failed == []


def test_operator_authorizes_with_cli_token_and_reads_a_balance_in_swagger_ui(
    tmp_path: Path, service: Service, browser: Browser
) -> None:
    page, traffic = open_docs(browser, service.base)

    # The page renders: the tag and its operations are on screen.
    expect(page.locator("#operations-tag-Reward_Points_Management")).to_be_visible()
    expect(
        page.locator(
            ".opblock-summary-path", has_text="/reward-points/customer/{customerId}/summary"
        )
    ).to_be_visible()
    expect(page.locator(GET_BALANCE)).to_be_visible()

    # Authorize with the token the CLI printed.
    authorize = page.locator(".scheme-container button.authorize")
    expect(authorize).to_have_class("btn authorize unlocked")
    authorize.click()
    dialog = page.locator(".dialog-ux .modal-ux")
    expect(dialog).to_be_visible()
    # Emporix's OAuth2 and CustomerAccessToken schemes are offered too; a token pasted as it
    # is goes in bearerAuth.
    expect(dialog).to_contain_text("OAuth2")
    expect(dialog).to_contain_text("CustomerAccessToken")
    scheme = dialog.locator("form", has_text="bearerAuth (http, Bearer)")
    scheme.locator('input[aria-label="auth-bearer-value"]').fill(service.token)
    scheme.locator("button.modal-btn.authorize").click()
    # Authorized: the value is masked and the dialog now offers "Logout".
    expect(scheme.get_by_role("button", name="Remove authorization")).to_be_visible()
    expect(scheme.locator('input[aria-label="auth-bearer-value"]')).to_have_count(0)
    scheme.locator("button.btn-done").click()
    expect(dialog).to_be_hidden()
    expect(authorize).to_have_class("btn authorize locked")

    status, body = try_get_balance(page, CUSTOMER)
    page.screenshot(path=str(tmp_path / "swagger-ui.png"), full_page=True)
    assert (status, body) == ("200", str(POINTS))

    assert any(url.endswith(f"/reward-points/customer/{CUSTOMER}") for url in traffic.urls)
    assert_only_loopback_and_nothing_failed(traffic)
    page.close()


def test_try_it_out_without_authorizing_shows_401(service: Service, browser: Browser) -> None:
    page, traffic = open_docs(browser, service.base)
    expect(page.locator(".scheme-container button.authorize")).to_have_class(
        "btn authorize unlocked"
    )

    status, body = try_get_balance(page, CUSTOMER)
    assert status == "401"
    assert "oauth.v2.InvalidAccessToken" in body
    assert str(POINTS) not in body

    assert_only_loopback_and_nothing_failed(traffic)
    page.close()


def test_the_operations_beyond_emporix_each_show_under_a_tag_of_their_own(
    service: Service, browser: Browser
) -> None:
    page, traffic = open_docs(browser, service.base)
    for tag, path in (
        ("Reversals", "/reward-points/customer/{customerId}/reversePoints"),
        ("Deductions", "/reward-points/customer/{customerId}/deductPoints"),
        ("History", "/reward-points/customer/{customerId}/history"),
        ("Balance_in_time", "/reward-points/customer/{customerId}/balance"),
        ("Expiring_points", "/reward-points/expiringPoints"),
        ("Liability", "/reward-points/liability"),
    ):
        section = page.locator(f"#operations-tag-{tag}")
        expect(section).to_be_visible()
        # Each tag's operations are listed right after its heading.
        operations = section.locator("xpath=..").locator(".opblock-summary-path")
        expect(operations.filter(has_text=path).first).to_be_visible()
    assert_only_loopback_and_nothing_failed(traffic)
    page.close()
