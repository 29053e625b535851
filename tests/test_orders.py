"""Points for completed orders: floor(amount x the site's factor), reference-id = the order id,
exactly once per order id (replays, concurrent deliveries), sites, scopes and bad input.
Runs on both databases."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardpoints.app import create_app

from .conftest import MANAGE, VIEW, make_settings
from .support import FakeClock

Headers = dict[str, str]

SITES = {
    "main": {"orderValueToRewardPointsFactor": 1.5, "validityInMonths": 36},
    "x100": {"orderValueToRewardPointsFactor": 100},
    "short": {"orderValueToRewardPointsFactor": 1, "validityInMonths": 2},
    "closed": {"enabled": False, "orderValueToRewardPointsFactor": 1},
}
START = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)


@pytest.fixture
async def app(database_url: str, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Any]:
    sites_file = tmp_path / "sites.json"
    sites_file.write_text(json.dumps(SITES))
    clock.now = START
    application = create_app(make_settings(database_url, sites_file=sites_file), clock=clock)
    yield application
    await application.state.ledger.engine.dispose()


def order(order_id: str = "B7011746", amount: Any = 19.99, status: str = "COMPLETED") -> Any:
    return {"orderId": order_id, "total": {"amount": amount, "currency": "EUR"}, "status": status}


async def send(
    client: httpx.AsyncClient,
    headers: Headers,
    body: Any,
    customer_id: str = "c1",
    site: str | None = None,
) -> httpx.Response:
    params = {"siteCode": site} if site is not None else None
    return await client.post(
        f"/reward-points/customer/{customer_id}/orders", json=body, params=params, headers=headers
    )


async def summary(client: httpx.AsyncClient, headers: Headers, customer_id: str = "c1") -> Any:
    response = await client.get(f"/reward-points/customer/{customer_id}/summary", headers=headers)
    return response.json() if response.status_code == 200 else response.status_code


async def test_a_completed_order_awards_floor_of_amount_times_the_sites_factor(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await send(client, headers, order(amount=19.99))  # x 1.5 = 29.985
    assert response.status_code == 201
    award = response.json()
    assert award["orderId"] == "B7011746"
    assert award["customerId"] == "c1"
    assert award["points"] == 29

    [lot] = (await summary(client, headers))["summary"]["addedPointsList"]
    assert lot["id"] == award["addedPointsId"]
    assert lot["reference-id"] == "B7011746"
    assert lot["description"] == "Bonus points for order B7011746"
    assert lot["points"] == 29
    assert lot["allPointsAfterCreation"] == 29
    assert lot["createdAt"].startswith("2030-01-15T10:00:00.")
    assert lot["validUntil"] == lot["createdAt"].replace("2030-", "2033-", 1)


async def test_order_points_are_computed_in_decimal_arithmetic(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    # In binary floating point 2.3 x 100 is 229.99999999999997 and 0.29 x 100 is 28.999...
    for order_id, amount, expected in [("o-1", 2.3, 230), ("o-2", 0.29, 29), ("o-3", 7, 700)]:
        response = await send(client, headers, order(order_id, amount), site="x100")
        assert response.status_code == 201
        assert response.json()["points"] == expected


async def test_order_validity_follows_the_site(client: httpx.AsyncClient, headers: Headers) -> None:
    response = await send(client, headers, order(amount=10), site="short")
    assert response.status_code == 201
    [lot] = (await summary(client, headers))["summary"]["addedPointsList"]
    assert lot["validUntil"] == lot["createdAt"].replace("2030-01-", "2030-03-", 1)


async def test_a_replayed_order_adds_nothing_and_answers_the_first_award(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    first = await send(client, headers, order(amount=100))
    assert first.status_code == 201
    again = await send(client, headers, order(amount=100))
    changed = await send(client, headers, order(amount=5000))
    for replay in (again, changed):
        assert replay.status_code == 200
        assert replay.json() == first.json()
    state = await summary(client, headers)
    assert state["activePoints"] == 150
    assert len(state["summary"]["addedPointsList"]) == 1


async def test_concurrent_deliveries_of_one_order_award_it_once(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    responses = await asyncio.gather(
        *(send(client, headers, order("o-par", amount=40)) for _ in range(5))
    )
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
    assert len({r.text for r in responses}) == 1
    state = await summary(client, headers)
    assert state["activePoints"] == 60
    assert len(state["summary"]["addedPointsList"]) == 1


async def test_the_same_order_for_another_customer_is_a_conflict(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    assert (await send(client, headers, order(amount=10))).status_code == 201
    response = await send(client, headers, order(amount=10), customer_id="c2")
    assert response.status_code == 409
    assert response.json() == {
        "status": 409,
        "type": "application/json",
        "message": "Reward Point Entry not Created",
        "moreInfo": "",
        "details": [
            {
                "field": "orderId",
                "type": None,
                "message": "Points for order 'B7011746' were already awarded to another customer",
                "moreInfo": "",
            }
        ],
    }
    assert await summary(client, headers, "c2") == 404  # not even an empty entry was left


async def test_order_ids_are_per_tenant(
    client: httpx.AsyncClient, tenant: str, headers: Headers, make_headers: Callable[..., Headers]
) -> None:
    other = make_headers("u" + tenant[1:])
    assert (await send(client, headers, order(amount=10))).status_code == 201
    assert (await send(client, other, order(amount=10))).status_code == 201
    assert (await summary(client, other))["activePoints"] == 15


async def test_an_order_that_is_not_completed_adds_nothing(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    for status in ("CREATED", "SHIPPED", "completed"):
        response = await send(client, headers, order(amount=10, status=status))
        assert response.status_code == 204
        assert response.content == b""
    assert await summary(client, headers) == 404
    # Nothing was recorded, so completing the order later awards it.
    assert (await send(client, headers, order(amount=10))).status_code == 201
    assert (await summary(client, headers))["activePoints"] == 15


async def test_an_order_on_a_site_with_reward_points_disabled_adds_nothing(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await send(client, headers, order(amount=10), site="closed")
    assert response.status_code == 204
    assert await summary(client, headers) == 404


async def test_an_order_for_an_unknown_site_is_400(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await send(client, headers, order(amount=10), site="nowhere")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "siteCode", "message": "Unknown siteCode 'nowhere'"}
    ]
    assert await summary(client, headers) == 404


async def test_an_order_worth_less_than_a_point_creates_the_entry_without_a_lot(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await send(client, headers, order(amount=0.5))  # x 1.5 = 0.75
    assert response.status_code == 201
    assert response.json() == {
        "orderId": "B7011746",
        "customerId": "c1",
        "points": 0,
        "addedPointsId": None,
    }
    state = await summary(client, headers)
    assert state["activePoints"] == 0
    assert state["summary"]["addedPointsList"] == []
    assert (await send(client, headers, order(amount=0.5))).status_code == 200


async def test_order_points_join_an_existing_entrys_running_balance(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    added = await client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 100}, headers=headers
    )
    assert added.status_code == 201
    assert (await send(client, headers, order(amount=20))).status_code == 201
    lots = (await summary(client, headers))["summary"]["addedPointsList"]
    assert [lot["allPointsAfterCreation"] for lot in lots] == [100, 130]


async def test_an_order_worth_more_than_the_maximum_is_400_and_not_recorded(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await send(client, headers, order(amount=2_000_000_000))  # x 1.5 > 2^31 - 1
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "total.amount"
    assert await summary(client, headers) == 404
    assert (await send(client, headers, order(amount=10))).status_code == 201


async def test_orders_need_the_manage_scope(
    client: httpx.AsyncClient, tenant: str, make_headers: Callable[..., Headers]
) -> None:
    view_only = await send(client, make_headers(tenant, VIEW), order())
    customer = await send(client, make_headers(tenant, MANAGE, customer_id="c1"), order())
    anonymous = await send(client, {}, order())
    assert (view_only.status_code, customer.status_code, anonymous.status_code) == (403, 403, 401)
    manager = make_headers(tenant, MANAGE)
    assert (await send(client, manager, order())).status_code == 201


def _without(key: str) -> dict[str, Any]:
    body: dict[str, Any] = order()
    del body[key]
    return body


INVALID_ORDERS: dict[str, Any] = {
    "no orderId": _without("orderId"),
    "empty orderId": order(order_id=""),
    "no total": _without("total"),
    "no status": _without("status"),
    "no amount": {**order(), "total": {"currency": "EUR"}},
    "no currency": {**order(), "total": {"amount": 10}},
    "negative amount": order(amount=-1),
    "amount as text": order(amount="19.99"),
    "amount as boolean": order(amount=True),
    "bad currency": {**order(), "total": {"amount": 10, "currency": "EURO"}},
    "total not an object": {**order(), "total": 10},
    "a list": [order()],
}


@pytest.mark.parametrize("body", INVALID_ORDERS.values(), ids=INVALID_ORDERS.keys())
async def test_invalid_orders_are_400(
    client: httpx.AsyncClient, headers: Headers, body: Any
) -> None:
    response = await send(client, headers, body)
    assert response.status_code == 400, response.text
    assert response.json()["instance"] == "/customer/c1/orders"
    assert await summary(client, headers) == 404


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_finite_amounts_are_400(
    client: httpx.AsyncClient, headers: Headers, literal: bytes
) -> None:
    body = b'{"orderId":"o","total":{"amount":%s,"currency":"EUR"},"status":"COMPLETED"}' % literal
    response = await client.post(
        "/reward-points/customer/c1/orders",
        content=body,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert await summary(client, headers) == 404


async def test_an_order_sent_again_after_its_customer_was_deleted_brings_no_customer_back(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    """The order stays awarded (exactly once), and the deleted customer stays deleted."""
    first = await send(client, headers, order(amount=10))
    assert first.status_code == 201
    deleted = await client.delete("/reward-points/customer/c1", headers=headers)
    assert deleted.status_code == 200

    again = await send(client, headers, order(amount=10))

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    balance = await client.get("/reward-points/customer/c1", headers=headers)
    assert balance.status_code == 404
