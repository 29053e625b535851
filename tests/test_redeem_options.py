"""Redeem Options Management on the wire: Emporix's bodies and statuses, ObjectId-style ids,
versioned metadata with the 409 on a stale version, who may read and write, and the path
tenant. Runs on both databases."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from .conftest import MANAGE, VIEW
from .support import FakeClock

Headers = dict[str, str]

OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")
ZULU_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

COUPON = {
    "name": "Gutschein über 10 Euro (eingelöste Bonuspunkte)",
    "description": "Gutschein über 10 Euro aus 1000 Bonuspunkte",
    "discountType": "ABSOLUTE",
    "discountAbsolute": {"amount": 10, "currency": "EUR"},
    "allowAnonymous": True,
    "maxRedemptions": 1,
    "status": "VALID",
}
OPTION = {
    "type": "coupon",
    "name": "10 Euro Gutschein",
    "description": "Für 90 Punkte können Sie sich einen Gutschein über 10 Euro generieren lassen.",
    "points": 90,
    "coupon": COUPON,
}


def options_url(tenant: str, option_id: str | None = None) -> str:
    base = f"/reward-points/{tenant}/redeemOptions"
    return f"{base}/{option_id}" if option_id is not None else base


def option(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(OPTION)
    body.update(changes)
    return body


def parse_zulu(value: str) -> datetime:
    assert ZULU_MILLIS.fullmatch(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def create(
    client: httpx.AsyncClient, tenant: str, headers: Headers, body: dict[str, Any]
) -> dict[str, Any]:
    """Create an option; returns it (the last of the answered list)."""
    response = await client.post(options_url(tenant), json=body, headers=headers)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()[-1]
    return created


async def listed(client: httpx.AsyncClient, tenant: str, headers: Headers) -> list[dict[str, Any]]:
    response = await client.get(options_url(tenant), headers=headers)
    assert response.status_code == 200, response.text
    options: list[dict[str, Any]] = response.json()
    return options


async def test_create_answers_the_tenants_options_with_object_ids_and_metadata(
    client: httpx.AsyncClient, tenant: str, headers: Headers, clock: FakeClock
) -> None:
    before = clock.now
    first = await client.post(options_url(tenant), json=OPTION, headers=headers)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    [only] = first.json()
    second_body = option(
        name="5 Euro",
        points=50,
        coupon={**COUPON, "discountAbsolute": {"amount": 5, "currency": "EUR"}},
    )
    second = await client.post(options_url(tenant), json=second_body, headers=headers)
    assert second.status_code == 200
    both = second.json()

    assert [o["name"] for o in both] == ["10 Euro Gutschein", "5 Euro"]
    assert both[0] == only
    for sent, got in zip([OPTION, second_body], both, strict=True):
        assert set(got) == {"id", "type", "name", "description", "points", "coupon", "metadata"}
        assert OBJECT_ID.fullmatch(got["id"])
        assert {k: got[k] for k in sent} == sent  # the coupon template comes back as written
        assert got["metadata"]["version"] == 1
        created_at = parse_zulu(got["metadata"]["createdAt"])
        assert got["metadata"]["modifiedAt"] == got["metadata"]["createdAt"]
        assert before < created_at <= clock.now
    assert both[0]["id"] != both[1]["id"]
    assert await listed(client, tenant, headers) == both


async def test_any_valid_token_of_the_tenant_may_read_the_options(
    client: httpx.AsyncClient, tenant: str, headers: Headers, make_headers: Callable[..., Headers]
) -> None:
    created = await create(client, tenant, headers, OPTION)
    readers = [
        make_headers(tenant, VIEW),
        make_headers(tenant, "customer.customerprofile_view", customer_id="c-1"),
        make_headers(tenant, "some.unrelated_scope"),
    ]
    for reader in readers:
        assert await listed(client, tenant, reader) == [created]

    anonymous = await client.get(options_url(tenant))
    assert anonymous.status_code == 401
    assert anonymous.json()["fault"]["detail"]["errorcode"] == "oauth.v2.InvalidAccessToken"


async def test_writing_options_needs_the_manage_scope_and_no_customer_token(
    client: httpx.AsyncClient, tenant: str, headers: Headers, make_headers: Callable[..., Headers]
) -> None:
    created = await create(client, tenant, headers, OPTION)
    not_allowed = [
        make_headers(tenant, VIEW),
        make_headers(tenant, VIEW, MANAGE, customer_id="c-1"),
    ]
    for writer in not_allowed:
        post = await client.post(options_url(tenant), json=OPTION, headers=writer)
        put = await client.put(
            options_url(tenant, created["id"]), json=option(points=1), headers=writer
        )
        delete = await client.delete(options_url(tenant, created["id"]), headers=writer)
        for response in (post, put, delete):
            assert response.status_code == 403, response.text
            assert response.json()["code"] == 403
            assert response.json()["status"] == "Forbidden"
    assert await listed(client, tenant, headers) == [created]

    manage_only = make_headers(tenant, MANAGE)
    assert (
        await client.post(options_url(tenant), json=OPTION, headers=manage_only)
    ).status_code == 200


async def test_the_path_tenant_must_be_the_tokens_tenant(
    client: httpx.AsyncClient, tenant: str, headers: Headers, make_headers: Callable[..., Headers]
) -> None:
    created = await create(client, tenant, headers, OPTION)
    other = make_headers("other" + tenant[-6:], VIEW, MANAGE)
    attempts = [
        await client.get(options_url(tenant), headers=other),
        await client.post(options_url(tenant), json=OPTION, headers=other),
        await client.put(options_url(tenant, created["id"]), json=OPTION, headers=other),
        await client.delete(options_url(tenant, created["id"]), headers=other),
    ]
    for response in attempts:
        assert response.status_code == 403, response.text
        assert response.json()["message"] == "Tenant validation failed"
    assert await listed(client, tenant, headers) == [created]


@pytest.mark.parametrize("word", ["customer", "public"])
async def test_customer_and_public_are_never_taken_as_a_tenant(
    client: httpx.AsyncClient, headers: Headers, word: str
) -> None:
    if word == "public":
        for method in ("GET", "POST"):
            response = await client.request(
                method, "/reward-points/public/redeemOptions", json=OPTION, headers=headers
            )
            assert response.status_code == 404, response.text
    for method in ("PUT", "DELETE"):
        response = await client.request(
            method,
            f"/reward-points/{word}/redeemOptions/0123456789abcdef01234567",
            json=OPTION,
            headers=headers,
        )
        assert response.status_code == 404, response.text
        assert response.json() == {
            "type": "resource_not_found",
            "status": 404,
            "message": "Not Found",
        }


async def test_customer_redeem_options_path_reads_as_a_customer_not_a_tenant(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.get("/reward-points/customer/redeemOptions", headers=headers)
    assert response.status_code == 404
    assert response.json()["message"] == "No reward points found for customer redeemOptions"


async def test_put_with_the_current_version_replaces_the_option_and_bumps_the_version(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    created = await create(client, tenant, headers, OPTION)
    replacement = {
        "type": "coupon",
        "name": "Zehn Prozent",
        "points": 120,
        "coupon": {"name": "10 %", "discountType": "PERCENT", "discountPercentage": 10},
        "metadata": {"version": 1},
    }
    response = await client.put(
        options_url(tenant, created["id"]), json=replacement, headers=headers
    )
    assert response.status_code == 200
    assert response.content == b""

    [updated] = await listed(client, tenant, headers)
    assert updated["id"] == created["id"]
    assert updated["name"] == "Zehn Prozent"
    assert updated["points"] == 120
    assert "description" not in updated  # the whole option is replaced
    assert updated["coupon"] == replacement["coupon"]
    assert updated["metadata"]["version"] == 2
    assert updated["metadata"]["createdAt"] == created["metadata"]["createdAt"]
    assert parse_zulu(updated["metadata"]["modifiedAt"]) > parse_zulu(
        created["metadata"]["createdAt"]
    )


async def test_put_with_a_stale_version_answers_409_and_changes_nothing(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    created = await create(client, tenant, headers, OPTION)
    url = options_url(tenant, created["id"])
    first = await client.put(url, json=option(points=70, metadata={"version": 1}), headers=headers)
    assert first.status_code == 200
    [current] = await listed(client, tenant, headers)

    stale = await client.put(url, json=option(points=10, metadata={"version": 1}), headers=headers)
    assert stale.status_code == 409
    assert stale.json() == {
        "status": 409,
        "message": "RedeemOption not Updated",
        "details": {
            "message": f"The resource that was requested for update with id = {created['id']} "
            "has changed. Please retry your request with valid version"
        },
    }
    assert await listed(client, tenant, headers) == [current]
    assert current["points"] == 70


@pytest.mark.parametrize("version", [0, -1, 2**63, -(10**25)])
async def test_put_with_a_version_that_cannot_exist_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, tenant: str, headers: Headers, version: int
) -> None:
    created = await create(client, tenant, headers, OPTION)
    url = options_url(tenant, created["id"])
    answer = await client.put(
        url, json=option(points=7, metadata={"version": version}), headers=headers
    )
    assert answer.status_code == 400, answer.text
    assert "metadata.version" in answer.text
    assert [o["points"] for o in await listed(client, tenant, headers)] == [OPTION["points"]]


async def test_put_without_a_version_replaces_without_a_check_and_bumps_the_version(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    created = await create(client, tenant, headers, OPTION)
    url = options_url(tenant, created["id"])
    for expected_version, points in [(2, 11), (3, 12)]:
        response = await client.put(url, json=option(points=points), headers=headers)
        assert response.status_code == 200
        [current] = await listed(client, tenant, headers)
        assert current["metadata"]["version"] == expected_version
        assert current["points"] == points


async def test_concurrent_puts_of_one_version_let_exactly_one_win(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    created = await create(client, tenant, headers, OPTION)
    url = options_url(tenant, created["id"])
    responses = await asyncio.gather(
        *(
            client.put(url, json=option(points=100 + i, metadata={"version": 1}), headers=headers)
            for i in range(4)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 409, 409, 409]
    winner = next(i for i, r in enumerate(responses) if r.status_code == 200)
    [current] = await listed(client, tenant, headers)
    assert current["metadata"]["version"] == 2
    assert current["points"] == 100 + winner


async def test_put_and_delete_of_an_unknown_option_are_404(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    unknown = "0123456789abcdef01234567"
    not_found = {
        "type": "resource_not_found",
        "status": 404,
        "message": f"No redeem option found with id {unknown}",
    }
    put = await client.put(options_url(tenant, unknown), json=OPTION, headers=headers)
    assert put.status_code == 404
    assert put.json() == not_found
    delete = await client.delete(options_url(tenant, unknown), headers=headers)
    assert delete.status_code == 404
    assert delete.json() == not_found
    assert await listed(client, tenant, headers) == []


async def test_options_of_another_tenant_cannot_be_changed_through_ones_own_path(
    client: httpx.AsyncClient, tenant: str, headers: Headers, make_headers: Callable[..., Headers]
) -> None:
    other_tenant = "u" + tenant[1:]
    other_headers = make_headers(other_tenant)
    theirs = await create(client, other_tenant, other_headers, OPTION)
    put = await client.put(options_url(tenant, theirs["id"]), json=OPTION, headers=headers)
    delete = await client.delete(options_url(tenant, theirs["id"]), headers=headers)
    assert (put.status_code, delete.status_code) == (404, 404)
    assert await listed(client, other_tenant, other_headers) == [theirs]
    assert await listed(client, tenant, headers) == []


async def test_put_with_another_id_in_the_body_is_400(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    created = await create(client, tenant, headers, OPTION)
    response = await client.put(
        options_url(tenant, created["id"]),
        json=option(id="ffffffffffffffffffffffff", points=1),
        headers=headers,
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "id", "message": "id in the body differs from the path"}
    ]
    assert await listed(client, tenant, headers) == [created]


async def test_delete_answers_204_and_removes_only_that_option(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    first = await create(client, tenant, headers, OPTION)
    second = await create(client, tenant, headers, option(name="other"))
    response = await client.delete(options_url(tenant, first["id"]), headers=headers)
    assert response.status_code == 204
    assert response.content == b""
    assert await listed(client, tenant, headers) == [second]


def _without(key: str) -> dict[str, Any]:
    body = option()
    del body[key]
    return body


def _coupon(**changes: Any) -> dict[str, Any]:
    coupon = copy.deepcopy(COUPON)
    for key, value in changes.items():
        if value is None:
            coupon.pop(key, None)
        else:
            coupon[key] = value
    return option(coupon=coupon)


INVALID_OPTIONS: dict[str, Any] = {
    "no type": _without("type"),
    "empty type": option(type=""),
    "no name": _without("name"),
    "no points": _without("points"),
    "zero points": option(points=0),
    "negative points": option(points=-5),
    "fractional points": option(points=1.5),
    "points as text": option(points="90"),
    "points as boolean": option(points=True),
    "points over the maximum": option(points=2**31),
    "free shipping coupon": _coupon(discountType="FREE_SHIPPING", discountAbsolute=None),
    "unknown discount type": _coupon(discountType="BOGUS"),
    "percent without a percentage": _coupon(discountType="PERCENT", discountAbsolute=None),
    "percentage over 100": _coupon(
        discountType="PERCENT", discountAbsolute=None, discountPercentage=101
    ),
    "absolute without an amount": _coupon(discountAbsolute=None),
    "absolute with a percentage too": _coupon(discountPercentage=5),
    "negative amount": _coupon(discountAbsolute={"amount": -1, "currency": "EUR"}),
    "bad currency": _coupon(discountAbsolute={"amount": 10, "currency": "EURO"}),
    "coupon without a name": _coupon(name=None),
    "coupon without a discount type": _coupon(discountType=None),
    "coupon not an object": option(coupon="10 EUR"),
    "a list": [OPTION],
}


@pytest.mark.parametrize("body", INVALID_OPTIONS.values(), ids=INVALID_OPTIONS.keys())
async def test_invalid_options_are_400_and_nothing_is_stored(
    client: httpx.AsyncClient, tenant: str, headers: Headers, body: Any
) -> None:
    response = await client.post(options_url(tenant), json=body, headers=headers)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"] == "about:blank"
    assert problem["status"] == 400
    assert problem["instance"] == f"/{tenant}/redeemOptions"

    created = await create(client, tenant, headers, OPTION)
    put = await client.put(options_url(tenant, created["id"]), json=body, headers=headers)
    assert put.status_code == 400, put.text
    assert await listed(client, tenant, headers) == [created]


async def test_malformed_json_is_400(
    client: httpx.AsyncClient, tenant: str, headers: Headers
) -> None:
    response = await client.post(
        options_url(tenant),
        content=b'{"type": "coupon",',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "Malformed JSON request body"
    assert await listed(client, tenant, headers) == []
