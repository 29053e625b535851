"""The Emporix-compatible coupon issuer against a real HTTP server on loopback (a stand-in for
Emporix's Coupon Service, under uvicorn in a thread): success, 500s, timeouts, refusals, taken
codes and a lost answer, with the ledger consistent after each. Runs on both databases."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app

from .conftest import make_settings
from .coupon_service import FakeCouponService
from .support import FakeClock, free_port
from .test_redeem_options import COUPON, OPTION, options_url

Headers = dict[str, str]
Send = Callable[[dict[str, Any]], Any]

PUBLIC = "/reward-points/public/customer"
CHARGEBACK = "Chargeback - redeemed voucher could not be created."
SERVICE_TOKEN = "coupon-service-token"
TIMEOUT_SECONDS = 0.4
ATTEMPTS = 3
START = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)


@pytest.fixture
def sites_file(tmp_path: Path) -> Path:
    path = tmp_path / "sites.json"
    # A lower-case prefix: the service saves codes upper-cased, and its answer is the code.
    path.write_text(json.dumps({"main": {"codePrefix": "lls", "validityInMonths": 36}}))
    return path


@pytest.fixture
async def app(
    database_url: str, clock: FakeClock, sites_file: Path, coupon_service: FakeCouponService
) -> AsyncIterator[Any]:
    settings = make_settings(
        database_url,
        sites_file=sites_file,
        coupon_service_url=coupon_service.url + "/",
        coupon_service_token=SERVICE_TOKEN,
        coupon_service_timeout_seconds=TIMEOUT_SECONDS,
        coupon_service_attempts=ATTEMPTS,
    )
    clock.now = START
    application = create_app(settings, clock=clock)
    yield application
    await application.state.ledger.engine.dispose()


@pytest.fixture
def customer(tenant: str, make_headers: Callable[..., Headers]) -> Headers:
    return make_headers(tenant, "customer.customerprofile_view", customer_id="c1")


@pytest.fixture
async def option_id(client: httpx.AsyncClient, tenant: str, headers: Headers) -> str:
    """A 90-point option, and 200 points for customer c1."""
    created = await client.post(options_url(tenant), json=OPTION, headers=headers)
    assert created.status_code == 200
    added = await client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 200}, headers=headers
    )
    assert added.status_code == 201
    option_id: str = created.json()[-1]["id"]
    return option_id


async def redeem(client: httpx.AsyncClient, customer: Headers, option_id: str) -> httpx.Response:
    return await client.post(f"{PUBLIC}/redeem", json={"id": option_id}, headers=customer)


async def summary_of_c1(client: httpx.AsyncClient, headers: Headers) -> dict[str, Any]:
    response = await client.get("/reward-points/customer/c1/summary", headers=headers)
    assert response.status_code == 200
    summary: dict[str, Any] = response.json()
    return summary


async def assert_spent_without_chargeback(client: httpx.AsyncClient, headers: Headers) -> None:
    summary = await summary_of_c1(client, headers)
    assert summary["activePoints"] == 110
    [redemption] = summary["summary"]["redeemedPointsList"]
    assert redemption["points"] == 90
    assert [lot["description"] for lot in summary["summary"]["addedPointsList"]] == ["points added"]


async def assert_charged_back(client: httpx.AsyncClient, headers: Headers) -> None:
    """The redemption stays, and the points came back as a new lot, as Emporix does it."""
    summary = await summary_of_c1(client, headers)
    assert summary["activePoints"] == 200
    [redemption] = summary["summary"]["redeemedPointsList"]
    assert redemption["points"] == 90
    assert redemption["description"] == OPTION["description"]
    assert redemption["allPointsAfterCreation"] == 110
    original, chargeback = summary["summary"]["addedPointsList"]
    assert original["usedPoints"] == 90
    assert original["usedWith"] == [redemption["id"]]
    assert chargeback["description"] == CHARGEBACK
    assert chargeback["reference-id"] is None
    assert chargeback["points"] == 90
    assert chargeback["usedPoints"] == 0
    assert chargeback["usedWith"] == []
    assert chargeback["allPointsAfterCreation"] == 200
    created_at = datetime.fromisoformat(chargeback["createdAt"])
    assert created_at > datetime.fromisoformat(redemption["createdAt"])
    assert chargeback["validUntil"] == chargeback["createdAt"].replace("2030-", "2033-", 1)
    assert created_at.year == 2030


def assert_bad_gateway(response: httpx.Response) -> None:
    assert response.status_code == 502, response.text
    body = response.json()
    assert set(body) == {"timestamp", "status", "error", "message", "path"}
    assert body["status"] == 502
    assert body["error"] == "Bad Gateway"
    assert body["message"] == (
        "The coupon could not be created; the 90 redeemed points were given back as a new entry"
    )
    assert body["path"] == "/public/customer/redeem"
    datetime.fromisoformat(body["timestamp"])


async def test_the_coupon_service_creates_the_coupon_and_its_code_is_answered(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    response = await redeem(client, customer, option_id)
    assert response.status_code == 200, response.text
    code = response.json()["code"]
    assert re.fullmatch(r"LLS-\d{6}", code)

    [post] = coupon_service.posts(tenant)
    assert post.path == f"/coupon/{tenant}/coupons"
    assert post.authorization == f"Bearer {SERVICE_TOKEN}"
    assert post.body["code"] == code.lower()
    assert post.body["issuedTo"] == "c1"
    assert post.body["maxRedemptions"] == 1
    assert "status" not in post.body  # read-only in the Coupon Service
    for key in ("name", "description", "discountType", "discountAbsolute", "allowAnonymous"):
        assert post.body[key] == COUPON[key]
    assert (tenant, code) in coupon_service.coupons
    await assert_spent_without_chargeback(client, headers)

    # The coupons live in the Coupon Service; this service does not list them.
    listing = await client.get(f"{PUBLIC}/coupons", headers=customer)
    assert listing.status_code == 404


async def test_a_coupon_service_failing_with_500_gets_the_points_charged_back(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    coupon_service.plans[tenant] = ["500"] * ATTEMPTS
    response = await redeem(client, customer, option_id)
    assert_bad_gateway(response)
    posts = coupon_service.posts(tenant)
    assert len(posts) == ATTEMPTS  # bounded: no more attempts than configured
    assert len({post.body["code"] for post in posts}) == 1
    assert not any(key[0] == tenant for key in coupon_service.coupons)
    await assert_charged_back(client, headers)


async def test_a_coupon_service_timing_out_gets_the_points_charged_back(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    coupon_service.plans[tenant] = ["stall"] * ATTEMPTS
    started = time.monotonic()
    response = await redeem(client, customer, option_id)
    elapsed = time.monotonic() - started
    assert_bad_gateway(response)
    assert len(coupon_service.posts(tenant)) == ATTEMPTS
    # Each attempt gave up after its timeout, instead of waiting for the stalled server.
    assert elapsed < ATTEMPTS * TIMEOUT_SECONDS + 5
    # The issuer looked whether a lost answer had created the coupon; it had not.
    assert len(coupon_service.gets(tenant)) == 1
    await assert_charged_back(client, headers)


async def test_a_customer_deleted_while_its_coupon_is_issued_is_not_brought_back(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    """The points are spent, then the customer is deleted, then the coupon fails: the
    chargeback finds no customer and writes nothing, and the answer is the 404 of a redeem
    that came after the delete."""
    coupon_service.plans[tenant] = ["stall"] * ATTEMPTS
    redeeming = asyncio.create_task(redeem(client, customer, option_id))
    for _ in range(500):
        if coupon_service.posts(tenant):
            break
        await asyncio.sleep(0.01)
    assert coupon_service.posts(tenant), "the coupon service was never asked"
    deleted = await client.delete("/reward-points/customer/c1", headers=headers)
    assert deleted.status_code == 200, deleted.text

    response = await redeeming

    assert response.status_code == 404, response.text
    assert (await client.get("/reward-points/customer/c1", headers=headers)).status_code == 404


async def test_an_unreachable_coupon_service_gets_the_points_charged_back(
    database_url: str,
    clock: FakeClock,
    sites_file: Path,
    tenant: str,
    headers: Headers,
    customer: Headers,
) -> None:
    settings = make_settings(
        database_url,
        sites_file=sites_file,
        coupon_service_url=f"http://127.0.0.1:{free_port()}",
        coupon_service_timeout_seconds=TIMEOUT_SECONDS,
    )
    clock.now = START
    application = create_app(settings, clock=clock)
    try:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            created = await client.post(options_url(tenant), json=OPTION, headers=headers)
            await client.post(
                "/reward-points/customer/c1/addPoints", json={"points": 200}, headers=headers
            )
            response = await redeem(client, customer, created.json()[0]["id"])
            assert_bad_gateway(response)
            await assert_charged_back(client, headers)
    finally:
        await application.state.ledger.engine.dispose()


async def test_a_transient_failure_is_retried_with_the_same_code(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    coupon_service.plans[tenant] = ["500", "stall"]
    response = await redeem(client, customer, option_id)
    assert response.status_code == 200, response.text
    posts = coupon_service.posts(tenant)
    assert len(posts) == 3
    assert {post.body["code"] for post in posts} == {response.json()["code"].lower()}
    await assert_spent_without_chargeback(client, headers)


async def test_a_refused_coupon_is_not_retried_and_gets_the_points_charged_back(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    coupon_service.plans[tenant] = ["400"]
    response = await redeem(client, customer, option_id)
    assert_bad_gateway(response)
    assert len(coupon_service.posts(tenant)) == 1
    assert coupon_service.gets(tenant) == []
    await assert_charged_back(client, headers)


async def test_a_taken_code_is_replaced_by_a_fresh_one(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    coupon_service.plans[tenant] = ["409"]
    response = await redeem(client, customer, option_id)
    assert response.status_code == 200, response.text
    first, second = coupon_service.posts(tenant)
    assert first.body["code"] != second.body["code"]
    assert response.json()["code"] == second.body["code"].upper()
    assert coupon_service.gets(tenant) == []  # nothing sent before could have created it
    await assert_spent_without_chargeback(client, headers)


async def test_a_coupon_created_before_its_answer_was_lost_is_recognised(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    coupon_service.plans[tenant] = ["store-then-stall"]
    response = await redeem(client, customer, option_id)
    assert response.status_code == 200, response.text
    code = response.json()["code"]
    first, second = coupon_service.posts(tenant)
    assert first.body["code"] == second.body["code"] == code.lower()
    assert [get.path for get in coupon_service.gets(tenant)] == [
        f"/coupon/{tenant}/coupons/{code.lower()}"
    ]
    assert [key for key in coupon_service.coupons if key[0] == tenant] == [(tenant, code)]
    await assert_spent_without_chargeback(client, headers)


@pytest.mark.parametrize(
    "posts",
    [
        ["store-then-stall"],  # the retry is told the code is taken
        ["store-then-stall"] * ATTEMPTS,  # every attempt's answer is lost
    ],
)
async def test_a_coupon_that_may_exist_unchecked_is_neither_charged_back_nor_made_again(
    app: Any,
    client: httpx.AsyncClient,
    clock: FakeClock,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
    posts: list[str],
) -> None:
    """The coupon is created but its answer is lost, and the service fails the look whether it
    exists: the coupon may exist, so the points are not charged back and no coupon is made
    under another code. The request answers 503; after the lease the outbox looks again and
    finds the coupon, which the key's retry gets."""
    coupon_service.plans[tenant] = list(posts)
    coupon_service.get_plans[tenant] = ["500"]
    keyed = {**customer, "Idempotency-Key": "k"}

    response = await client.post(f"{PUBLIC}/redeem", json={"id": option_id}, headers=keyed)

    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert set(response.json()) == {"timestamp", "status", "error", "path"}
    await assert_spent_without_chargeback(client, headers)
    pending = await client.post(f"{PUBLIC}/redeem", json={"id": option_id}, headers=keyed)
    assert pending.status_code == 409, pending.text

    clock.advance(seconds=app.state.settings.outbox_lease_seconds + 1)
    assert await app.state.outbox.run_due() == 1

    replayed = await client.post(f"{PUBLIC}/redeem", json={"id": option_id}, headers=keyed)
    assert replayed.status_code == 200, replayed.text
    assert replayed.headers["Idempotent-Replayed"] == "true"
    code = replayed.json()["code"]
    assert {post.body["code"] for post in coupon_service.posts(tenant)} == {code.lower()}
    assert [key for key in coupon_service.coupons if key[0] == tenant] == [(tenant, code)]
    await assert_spent_without_chargeback(client, headers)


async def test_a_refusal_after_a_lost_answer_finds_the_coupon_that_answer_created(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    option_id: str,
    coupon_service: FakeCouponService,
) -> None:
    """The first attempt creates the coupon but its answer is lost; the retry is refused (a
    4xx other than 409). The coupon exists: it is the customer's, and nothing is charged back."""
    coupon_service.plans[tenant] = ["store-then-stall", "400"]
    response = await redeem(client, customer, option_id)
    assert response.status_code == 200, response.text
    code = response.json()["code"]
    assert [key for key in coupon_service.coupons if key[0] == tenant] == [(tenant, code)]
    await assert_spent_without_chargeback(client, headers)
