"""The signed-in customer's endpoints: own balance and summary, the storefront's redeem options
with pointsAfterCoupon, the redeem for a built-in coupon, site settings, and the separation of
customer and admin tokens. Runs on both databases."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app
from rewardpoints.coupons import BuiltInCoupons

from .conftest import MANAGE, VIEW, make_settings
from .support import FakeClock
from .test_redeem_options import COUPON, OPTION, option, options_url

Headers = dict[str, str]

PUBLIC = "/reward-points/public/customer"
SITES = {
    "main": {"enabled": True, "validityInMonths": 36, "codePrefix": "RP"},
    "lls": {"enabled": True, "validityInMonths": 2, "codePrefix": "LLS"},
    "closed": {"enabled": False, "codePrefix": "X"},
}


@pytest.fixture
def sites_file(tmp_path: Path) -> Path:
    path = tmp_path / "sites.json"
    path.write_text(json.dumps(SITES))
    return path


@pytest.fixture
async def app(database_url: str, clock: FakeClock, sites_file: Path) -> AsyncIterator[Any]:
    """The service configured with the sites above and the built-in coupon issuer."""
    application = create_app(make_settings(database_url, sites_file=sites_file), clock=clock)
    yield application
    await application.state.ledger.engine.dispose()


@pytest.fixture
def customer(tenant: str, make_headers: Callable[..., Headers]) -> Headers:
    """A signed-in customer's token: customerId c1 and a storefront scope, no reward scope."""
    return make_headers(tenant, "customer.customerprofile_view", customer_id="c1")


async def add_points(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, points: int, **extra: Any
) -> None:
    response = await client.post(
        f"/reward-points/customer/{customer_id}/addPoints",
        json={"points": points, **extra},
        headers=headers,
    )
    assert response.status_code == 201, response.text


async def admin_summary(
    client: httpx.AsyncClient, headers: Headers, customer_id: str
) -> dict[str, Any]:
    response = await client.get(f"/reward-points/customer/{customer_id}/summary", headers=headers)
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()
    return summary


async def create_option(
    client: httpx.AsyncClient, tenant: str, headers: Headers, body: dict[str, Any] = OPTION
) -> dict[str, Any]:
    response = await client.post(options_url(tenant), json=body, headers=headers)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()[-1]
    return created


async def redeem(
    client: httpx.AsyncClient, headers: Headers, option_id: str, site: str | None = None
) -> httpx.Response:
    params = {"siteCode": site} if site is not None else None
    return await client.post(
        f"{PUBLIC}/redeem", json={"id": option_id}, params=params, headers=headers
    )


async def test_signed_in_customer_reads_own_balance_as_a_bare_integer(
    client: httpx.AsyncClient, headers: Headers, customer: Headers
) -> None:
    await add_points(client, headers, "c1", 150)
    await add_points(client, headers, "c2", 40)
    response = await client.get(PUBLIC, headers=customer)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b"150"


async def test_signed_in_customer_reads_own_summary(
    client: httpx.AsyncClient, headers: Headers, customer: Headers
) -> None:
    await add_points(client, headers, "c1", 150, description="welcome")
    await add_points(client, headers, "c2", 40)
    response = await client.get(f"{PUBLIC}/summary", headers=customer)
    assert response.status_code == 200
    assert response.json() == await admin_summary(client, headers, "c1")
    assert response.json()["activePoints"] == 150


async def test_customer_without_an_entry_gets_404_on_balance_and_summary(
    client: httpx.AsyncClient, tenant: str, make_headers: Callable[..., Headers]
) -> None:
    newcomer = make_headers(tenant, customer_id="c-new")
    for path in (PUBLIC, f"{PUBLIC}/summary"):
        response = await client.get(path, headers=newcomer)
        assert response.status_code == 404
        assert response.json() == {
            "type": "resource_not_found",
            "status": 404,
            "message": "No reward points found for customer c-new",
        }


async def test_admin_tokens_never_act_as_a_customer(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    await add_points(client, headers, "c1", 500)
    created = await create_option(client, tenant, headers)
    requests = [
        ("GET", PUBLIC, None),
        ("GET", f"{PUBLIC}/summary", None),
        ("GET", f"{PUBLIC}/redeemOptions", None),
        ("GET", f"{PUBLIC}/coupons", None),
        ("POST", f"{PUBLIC}/redeem", {"id": created["id"]}),
    ]
    for method, path, body in requests:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["message"] == "Customer validation failed"
    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 500

    anonymous = await client.get(PUBLIC)
    assert anonymous.status_code == 401


async def test_customer_tokens_never_reach_admin_endpoints(
    client: httpx.AsyncClient, tenant: str, headers: Headers, make_headers: Callable[..., Headers]
) -> None:
    await add_points(client, headers, "c1", 500)
    created = await create_option(client, tenant, headers)
    # Even a customer token that carries the admin scopes is refused.
    customer_with_scopes = make_headers(tenant, VIEW, MANAGE, customer_id="c1")
    order = {"orderId": "o-1", "total": {"amount": 10, "currency": "EUR"}, "status": "COMPLETED"}
    requests = [
        ("GET", "/reward-points/summaryBatch", None),
        ("GET", "/reward-points/customer/c1", None),
        ("GET", "/reward-points/customer/c1/summary", None),
        ("POST", "/reward-points/customer/c1/addPoints", {"points": 5}),
        ("POST", "/reward-points/customer/c1/redeemPoints", {"points": 5}),
        ("POST", "/reward-points/customer/c9", None),
        ("DELETE", "/reward-points/customer/c1", None),
        ("POST", "/reward-points/customer/c1/orders", order),
        ("POST", options_url(tenant), OPTION),
        ("PUT", options_url(tenant, created["id"]), OPTION),
        ("DELETE", options_url(tenant, created["id"]), None),
    ]
    for method, path, body in requests:
        response = await client.request(method, path, json=body, headers=customer_with_scopes)
        assert response.status_code == 403, (method, path, response.text)
    summary = await admin_summary(client, headers, "c1")
    assert summary["activePoints"] == 500
    assert len(summary["summary"]["addedPointsList"]) == 1
    assert (await client.get(options_url(tenant), headers=headers)).json() == [created]


async def test_storefront_redeem_options_show_points_after_coupon(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    cheap = await create_option(client, tenant, headers, option(points=90))
    dear = await create_option(client, tenant, headers, option(name="big", points=300))
    await add_points(client, headers, "c1", 200)

    response = await client.get(f"{PUBLIC}/redeemOptions", headers=customer)
    assert response.status_code == 200
    listed = response.json()
    assert [o["pointsAfterCoupon"] for o in listed] == [110, -100]
    assert [{k: v for k, v in o.items() if k != "pointsAfterCoupon"} for o in listed] == [
        cheap,
        dear,
    ]

    newcomer = make_headers(tenant, customer_id="c-new")
    response = await client.get(f"{PUBLIC}/redeemOptions", headers=newcomer)
    assert [o["pointsAfterCoupon"] for o in response.json()] == [-90, -300]


async def test_redeem_spends_the_options_points_and_answers_a_built_in_coupon(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    await add_points(client, headers, "c1", 200)

    response = await redeem(client, customer, created["id"])
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"code"}
    code = response.json()["code"]
    assert re.fullmatch(r"RP-\d{6}", code)

    summary = await admin_summary(client, headers, "c1")
    assert summary["activePoints"] == 110
    [redemption] = summary["summary"]["redeemedPointsList"]
    assert redemption["points"] == 90
    assert redemption["description"] == OPTION["description"]
    assert redemption["allPointsAfterCreation"] == 110
    [lot] = summary["summary"]["addedPointsList"]  # no chargeback
    assert lot["usedWith"] == [redemption["id"]]

    coupons = await client.get(f"{PUBLIC}/coupons", headers=customer)
    assert coupons.status_code == 200
    [coupon] = coupons.json()
    assert coupon["code"] == code
    assert coupon["issuedTo"] == "c1"
    assert coupon["maxRedemptions"] == 1
    assert coupon["status"] == "VALID"
    for key in ("name", "description", "discountType", "discountAbsolute", "allowAnonymous"):
        assert coupon[key] == COUPON[key]


async def test_redeem_codes_use_the_sites_prefix(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers, option(points=10))
    await add_points(client, headers, "c1", 100)
    response = await redeem(client, customer, created["id"], site="lls")
    assert response.status_code == 200
    assert re.fullmatch(r"LLS-\d{6}", response.json()["code"])


async def test_each_customer_lists_only_own_coupons(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    created = await create_option(client, tenant, headers, option(points=10))
    await add_points(client, headers, "c1", 100)
    await add_points(client, headers, "c2", 100)
    other = make_headers(tenant, customer_id="c2")
    codes = [
        (await redeem(client, customer, created["id"])).json()["code"],
        (await redeem(client, customer, created["id"])).json()["code"],
        (await redeem(client, other, created["id"])).json()["code"],
    ]
    assert len(set(codes)) == 3
    mine = (await client.get(f"{PUBLIC}/coupons", headers=customer)).json()
    theirs = (await client.get(f"{PUBLIC}/coupons", headers=other)).json()
    assert [c["code"] for c in mine] == codes[:2]
    assert [c["code"] for c in theirs] == codes[2:]


async def test_redeem_of_an_unknown_option_is_404_and_spends_nothing(
    client: httpx.AsyncClient, headers: Headers, customer: Headers
) -> None:
    await add_points(client, headers, "c1", 200)
    response = await redeem(client, customer, "0123456789abcdef01234567")
    assert response.status_code == 404
    assert response.json() == {
        "type": "resource_not_found",
        "status": 404,
        "message": "No redeem option found with id 0123456789abcdef01234567",
    }
    summary = await admin_summary(client, headers, "c1")
    assert summary["activePoints"] == 200
    assert summary["summary"]["redeemedPointsList"] == []


async def test_redeem_of_another_tenants_option_is_404(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    customer: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    other_tenant = "u" + tenant[1:]
    theirs = await create_option(client, other_tenant, make_headers(other_tenant))
    await add_points(client, headers, "c1", 200)
    assert (await redeem(client, customer, theirs["id"])).status_code == 404
    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 200


async def test_redeem_with_too_few_points_is_400_and_spends_nothing(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    await add_points(client, headers, "c1", 89)
    response = await redeem(client, customer, created["id"])
    assert response.status_code == 400
    assert response.json()["detail"] == "Not enough reward points: requested 90, available 89"
    summary = await admin_summary(client, headers, "c1")
    assert summary["activePoints"] == 89
    assert summary["summary"]["redeemedPointsList"] == []
    assert (await client.get(f"{PUBLIC}/coupons", headers=customer)).json() == []


async def test_redeem_without_an_entry_is_404(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    response = await redeem(client, customer, created["id"])
    assert response.status_code == 404
    assert response.json()["message"] == "No reward points found for customer c1"


async def test_redeem_on_a_site_with_reward_points_disabled_is_400(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    await add_points(client, headers, "c1", 200)
    response = await redeem(client, customer, created["id"], site="closed")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "siteCode", "message": "Reward points are disabled for site 'closed'"}
    ]
    assert (await admin_summary(client, headers, "c1"))["summary"]["redeemedPointsList"] == []


async def test_redeem_with_an_unknown_site_is_400(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    await add_points(client, headers, "c1", 200)
    response = await redeem(client, customer, created["id"], site="nowhere")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "siteCode", "message": "Unknown siteCode 'nowhere'"}
    ]
    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"id": "0123456789abcdef01234567", "redeemOptionId": "0123456789abcdef01234568"},
        {"redeemOptionId": ""},
        {"id": ""},
        {"id": 5},
        ["x"],
    ],
    ids=["empty", "conflicting alias", "empty alias", "empty id", "numeric id", "a list"],
)
async def test_redeem_needs_an_option_id(
    client: httpx.AsyncClient, headers: Headers, customer: Headers, body: Any
) -> None:
    await add_points(client, headers, "c1", 200)
    response = await client.post(f"{PUBLIC}/redeem", json=body, headers=customer)
    assert response.status_code == 400, response.text
    assert response.json()["instance"] == "/public/customer/redeem"
    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 200


async def test_redeem_of_an_option_without_a_coupon_template_is_400(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    bare = {k: v for k, v in OPTION.items() if k != "coupon"}
    created = await create_option(client, tenant, headers, bare)
    assert "coupon" not in created
    await add_points(client, headers, "c1", 200)
    response = await redeem(client, customer, created["id"])
    assert response.status_code == 400
    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 200


async def test_concurrent_redeems_never_spend_a_point_twice(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers, option(points=60))
    await add_points(client, headers, "c1", 100)
    responses = await asyncio.gather(*(redeem(client, customer, created["id"]) for _ in range(3)))
    assert sorted(r.status_code for r in responses) == [200, 400, 400]
    summary = await admin_summary(client, headers, "c1")
    assert summary["activePoints"] == 40
    assert len(summary["summary"]["redeemedPointsList"]) == 1
    assert len((await client.get(f"{PUBLIC}/coupons", headers=customer)).json()) == 1


async def test_the_sites_validity_sets_the_default_valid_until(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    clock.now = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)
    response = await client.post(
        "/reward-points/customer/c1/addPoints?siteCode=lls", json={"points": 5}, headers=headers
    )
    assert response.status_code == 201
    await add_points(client, headers, "c1", 7)  # main: 36 months
    lots = (await admin_summary(client, headers, "c1"))["summary"]["addedPointsList"]
    assert [(lot["createdAt"][:19], lot["validUntil"][:19]) for lot in lots] == [
        ("2030-01-15T10:00:00", "2030-03-15T10:00:00"),
        ("2030-01-15T10:00:00", "2033-01-15T10:00:00"),
    ]
    for lot in lots:
        assert lot["validUntil"][19:] == lot["createdAt"][19:]  # to the millisecond

    unknown = await client.post(
        "/reward-points/customer/c1/addPoints?siteCode=nowhere", json={"points": 5}, headers=headers
    )
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == [
        {"field": "siteCode", "message": "Unknown siteCode 'nowhere'"}
    ]


async def test_built_in_issuer_draws_another_code_when_one_is_taken(
    app: Any, client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers, option(points=10))
    await add_points(client, headers, "c1", 100)
    drawn = iter([7, 7, 8])
    app.state.rewards.issuer = BuiltInCoupons(digits=lambda: next(drawn))
    first = await redeem(client, customer, created["id"])
    second = await redeem(client, customer, created["id"])
    assert [first.json(), second.json()] == [{"code": "RP-000007"}, {"code": "RP-000008"}]

    # Every code taken: no coupon, and the points come back as a new lot.
    app.state.rewards.issuer = BuiltInCoupons(digits=lambda: 7, attempts=3)
    stuck = await redeem(client, customer, created["id"])
    assert stuck.status_code == 502, stuck.text
    summary = await admin_summary(client, headers, "c1")
    assert summary["activePoints"] == 80
    assert [lot["points"] for lot in summary["summary"]["addedPointsList"]] == [100, 10]
    coupons = await client.get(f"{PUBLIC}/coupons", headers=customer)
    assert [c["code"] for c in coupons.json()] == ["RP-000007", "RP-000008"]
