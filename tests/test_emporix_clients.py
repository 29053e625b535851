"""What an existing Emporix client sends and reads: redeem options written without nulls,
coupon templates read with the defaults of Emporix's schema, a JSON body without its
Content-Type refused with 415 (by the fast lane and the routes alike), and the redeem field
name a deployed storefront SDK sends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app
from rewardpoints.config import Settings

from .support import FakeClock
from .test_public_customer import PUBLIC, add_points, admin_summary, create_option
from .test_redeem_options import COUPON, listed, option, options_url

Headers = dict[str, str]


@pytest.fixture
def customer(tenant: str, make_headers: Callable[..., Headers]) -> Headers:
    return make_headers(tenant, "customer.customerprofile_view", customer_id="c1")


def _bare_option() -> dict[str, Any]:
    return {"type": "coupon", "name": "Just a name", "points": 10}


# ---- redeem options are written without nulls -----------------------------------------------


async def test_an_option_without_description_or_coupon_is_written_without_them_everywhere(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    posted = await client.post(options_url(tenant), json=_bare_option(), headers=headers)
    assert posted.status_code == 200, posted.text
    await add_points(client, headers, "c1", 25)
    admin = await client.get(options_url(tenant), headers=headers)
    public = await client.get(f"{PUBLIC}/redeemOptions", headers=customer)

    for answer in (posted, admin, public):
        assert answer.status_code == 200, answer.text
        assert b"null" not in answer.content, answer.text
        [written] = answer.json()
        assert set(written) - {"pointsAfterCoupon"} == {"id", "type", "name", "points", "metadata"}
    assert public.json()[0]["pointsAfterCoupon"] == 15


async def test_a_replaced_option_drops_the_members_the_replacement_leaves_out(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    replaced = await client.put(
        options_url(tenant, created["id"]), json=_bare_option(), headers=headers
    )
    assert replaced.status_code == 200, replaced.text
    [written] = await listed(client, tenant, headers)
    assert "description" not in written
    assert "coupon" not in written


async def test_null_members_of_a_coupon_template_are_not_written_back(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    coupon = {**COUPON, "description": None, "restrictions": None, "discountPercentage": None}
    created = await create_option(client, tenant, headers, option(coupon=coupon))
    assert created["coupon"] == {k: v for k, v in coupon.items() if v is not None}


# ---- input Emporix's schema accepts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ({"amount": 10}, {"amount": 10, "currency": "USD"}),
        ({"currency": "EUR"}, {"amount": 0, "currency": "EUR"}),
        ({}, {"amount": 0, "currency": "USD"}),
    ],
    ids=["amount only", "currency only", "empty"],
)
async def test_a_money_amount_takes_the_defaults_of_emporix_schema(
    client: httpx.AsyncClient,
    tenant: str,
    headers: Headers,
    given: dict[str, Any],
    stored: dict[str, Any],
) -> None:
    coupon = {**COUPON, "discountAbsolute": given, "restrictions": {"minOrderValue": given}}
    created = await create_option(client, tenant, headers, option(coupon=coupon))
    assert created["coupon"]["discountAbsolute"] == stored
    assert created["coupon"]["restrictions"]["minOrderValue"] == stored
    [listed_option] = await listed(client, tenant, headers)
    assert listed_option["coupon"]["discountAbsolute"] == stored


async def test_a_redeem_passes_the_defaulted_currency_on_to_the_coupon(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    coupon = {**COUPON, "discountAbsolute": {"amount": 10}}
    created = await create_option(client, tenant, headers, option(coupon=coupon))
    await add_points(client, headers, "c1", 200)
    redeemed = await client.post(f"{PUBLIC}/redeem", json={"id": created["id"]}, headers=customer)
    assert redeemed.status_code == 200, redeemed.text
    coupons = await client.get(f"{PUBLIC}/coupons", headers=customer)
    [issued] = coupons.json()
    assert issued["discountAbsolute"] == {"amount": 10, "currency": "USD"}


@pytest.mark.parametrize("field", ["maxRedemptions", "maxRedemptionsPerCustomer"])
async def test_integral_numbers_are_whole_counts(
    client: httpx.AsyncClient, tenant: str, headers: Headers, field: str
) -> None:
    created = await create_option(client, tenant, headers, option(coupon={**COUPON, field: 1.0}))
    assert created["coupon"][field] == 1
    assert isinstance(created["coupon"][field], int)
    unlimited = await create_option(client, tenant, headers, option(coupon={**COUPON, field: -1.0}))
    assert unlimited["coupon"][field] == -1


@pytest.mark.parametrize("value", [1.5, "1", True])
@pytest.mark.parametrize("field", ["maxRedemptions", "maxRedemptionsPerCustomer"])
async def test_a_count_that_is_not_a_whole_number_is_a_clear_400(
    client: httpx.AsyncClient, tenant: str, headers: Headers, field: str, value: Any
) -> None:
    response = await client.post(
        options_url(tenant), json=option(coupon={**COUPON, field: value}), headers=headers
    )
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == f"coupon.{field}"
    assert "whole number" in problem["detail"]
    assert problem["detail"].startswith(f"coupon.{field}: ")
    assert await listed(client, tenant, headers) == []


# ---- 415 for a body that is not sent as JSON -------------------------------------------------


@pytest.fixture(params=[True, False], ids=["fast lane", "routes only"])
async def lanes(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings.model_copy(update={"fast_lane": request.param}), clock=clock)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http
    await application.state.ledger.engine.dispose()


NOT_JSON = {
    "text/plain": {"Content-Type": "text/plain"},
    "form-encoded": {"Content-Type": "application/x-www-form-urlencoded"},
    "none": {},
}


@pytest.mark.parametrize("content_type", NOT_JSON.values(), ids=NOT_JSON.keys())
@pytest.mark.parametrize("action", ["addPoints", "redeemPoints"])
async def test_a_json_body_without_its_content_type_is_415_naming_the_expected_type(
    lanes: httpx.AsyncClient, headers: Headers, content_type: Headers, action: str
) -> None:
    url = "/reward-points/customer/c1"
    seeded = await lanes.post(f"{url}/addPoints", json={"points": 50}, headers=headers)
    assert seeded.status_code == 201, seeded.text
    # The token is known now: the fast lane, where it is on, takes the next request.

    response = await lanes.post(
        f"{url}/{action}", content=b'{"points": 5}', headers={**headers, **content_type}
    )

    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "type": "about:blank",
        "title": "Unsupported Media Type",
        "status": 415,
        "detail": body["detail"],
        "instance": f"/customer/c1/{action}",
    }
    assert "application/json" in body["detail"]
    if content_type:
        assert content_type["Content-Type"] in body["detail"]
    assert (await lanes.get(url, headers=headers)).json() == 50

    # JSON with parameters or in capitals is JSON.
    for json_type in ("application/json; charset=utf-8", "APPLICATION/JSON"):
        sent = await lanes.post(
            f"{url}/{action}",
            content=b'{"points": 5}',
            headers={**headers, "Content-Type": json_type},
        )
        assert sent.status_code == 201, sent.text
    assert (await lanes.get(url, headers=headers)).json() == (60 if action == "addPoints" else 40)


async def test_every_json_endpoint_answers_415_to_a_form(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    requests = [
        ("POST", options_url(tenant), headers),
        ("PUT", options_url(tenant, created["id"]), headers),
        ("POST", "/reward-points/customer/c9", headers),
        ("POST", "/reward-points/customer/c9/orders", headers),
        ("POST", f"{PUBLIC}/redeem", customer),
    ]
    for method, url, auth in requests:
        # The token is checked first, as Emporix's gateway does.
        anonymous = await client.request(method, url, content=b"id=x", headers=form)
        assert anonymous.status_code == 401, (method, url, anonymous.text)
        response = await client.request(method, url, content=b"id=x", headers={**auth, **form})
        assert response.status_code == 415, (method, url, response.text)
        assert response.json()["title"] == "Unsupported Media Type"
    assert await listed(client, tenant, headers) == [created]


# ---- the field name a storefront SDK sends ---------------------------------------------------


async def test_redeem_accepts_redeem_option_id_as_an_alias_of_id(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    created = await create_option(client, tenant, headers)
    await add_points(client, headers, "c1", 200)

    by_alias = await client.post(
        f"{PUBLIC}/redeem", json={"redeemOptionId": created["id"]}, headers=customer
    )
    assert by_alias.status_code == 200, by_alias.text
    assert by_alias.json()["code"]
    both = await client.post(
        f"{PUBLIC}/redeem",
        json={"id": created["id"], "redeemOptionId": created["id"]},
        headers=customer,
    )
    assert both.status_code == 200, both.text
    assert both.json()["code"] != by_alias.json()["code"]

    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 200 - 2 * 90


async def test_redeem_with_id_and_a_different_redeem_option_id_is_400_and_spends_nothing(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    first = await create_option(client, tenant, headers)
    second = await create_option(client, tenant, headers)
    await add_points(client, headers, "c1", 200)

    response = await client.post(
        f"{PUBLIC}/redeem",
        json={"id": first["id"], "redeemOptionId": second["id"]},
        headers=customer,
    )

    assert response.status_code == 400, response.text
    problem = response.json()
    assert "id" in problem["detail"] and "redeemOptionId" in problem["detail"]
    assert problem["instance"] == "/public/customer/redeem"
    assert (await admin_summary(client, headers, "c1"))["activePoints"] == 200


async def test_an_unknown_redeem_option_id_is_the_404_of_an_unknown_id(
    client: httpx.AsyncClient, tenant: str, headers: Headers, customer: Headers
) -> None:
    await add_points(client, headers, "c1", 200)
    unknown = "0123456789abcdef01234567"
    by_alias = await client.post(
        f"{PUBLIC}/redeem", json={"redeemOptionId": unknown}, headers=customer
    )
    by_id = await client.post(f"{PUBLIC}/redeem", json={"id": unknown}, headers=customer)
    assert by_alias.status_code == by_id.status_code == 404
    assert by_alias.json() == by_id.json()
