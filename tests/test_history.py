"""A customer's history, balances at past instants, expiring points and dry runs, through the
HTTP API on the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .conftest import bearer, token
from .support import FakeClock

Headers = dict[str, str]
BASE = "/reward-points"
SIGN = {"added": 1, "chargeback": 1, "reversed": 1, "redeemed": -1, "deducted": -1, "expired": -1}


def url(customer_id: str, action: str = "") -> str:
    return f"{BASE}/customer/{customer_id}{action}"


async def ok(
    client: httpx.AsyncClient, headers: Headers, customer: str, action: str, **body: Any
) -> Any:
    response = await client.post(url(customer, f"/{action}"), json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json() if response.content else None


async def get(client: httpx.AsyncClient, headers: Headers, path: str, **params: Any) -> Any:
    response = await client.get(f"{BASE}{path}", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def whole_history(
    client: httpx.AsyncClient, headers: Headers, customer: str, limit: int = 1000, **params: Any
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page_params = {"limit": limit, **params}
        if cursor is not None:
            page_params["cursor"] = cursor
        page = await get(client, headers, f"/customer/{customer}/history", **page_params)
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


def assert_chained(items: list[dict[str, Any]]) -> None:
    """Newest first: each entry's balance after is the one before it moved by its points."""
    for newer, older in zip(items, items[1:], strict=False):
        assert (
            newer["balanceAfter"] == older["balanceAfter"] + SIGN[newer["kind"]] * newer["points"]
        ), (newer, older)
    if items:
        assert items[-1]["balanceAfter"] == SIGN[items[-1]["kind"]] * items[-1]["points"]


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


async def a_customer_with_every_kind(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> datetime:
    """c1: l1 (10, expiring in a day), l2 (20), r1 (5 from l1); after l1 expired, d1 (3) and
    the reversal of r1, whose 5 come back to l1 expired. Returns l1's validUntil."""
    valid_until = clock.now + timedelta(days=1)
    await ok(
        client,
        headers,
        "c1",
        "addPoints",
        id="l1",
        points=10,
        validUntil=at(valid_until),
        reason="welcome",
    )
    await ok(client, headers, "c1", "addPoints", id="l2", points=20, **{"reference-id": "o-2"})
    await ok(client, headers, "c1", "redeemPoints", id="r1", points=5, reason="voucher")
    clock.advance(days=2)
    await ok(client, headers, "c1", "deductPoints", id="d1", points=3, reason="goods returned")
    await ok(client, headers, "c1", "reversePoints", id="v1", redemptionId="r1", reason="cancel")
    return valid_until


async def test_history_lists_every_entry_newest_first_with_its_actor_and_reason(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock, tenant: str
) -> None:
    valid_until = await a_customer_with_every_kind(client, headers, clock)
    items = await whole_history(client, headers, "c1")
    operator = f"{tenant}-operator"  # the sub of the tests' tokens
    assert [
        (i["kind"], i["id"], i["points"], i["balanceAfter"], i["reason"], i["actor"]) for i in items
    ] == [
        ("expired", "l1", 5, 17, "cancel", operator),
        ("reversed", "v1", 5, 22, "cancel", operator),
        ("deducted", "d1", 3, 17, "goods returned", operator),
        ("expired", "l1", 5, 20, None, None),
        ("redeemed", "r1", 5, 25, "voucher", operator),
        ("added", "l2", 20, 30, None, operator),
        ("added", "l1", 10, 10, "welcome", operator),
    ]
    assert items[3]["createdAt"] == valid_until.isoformat(timespec="milliseconds")
    assert items[1]["reference-id"] == "r1"  # a reversal names its redemption
    assert items[5]["reference-id"] == "o-2"
    assert_chained(items)
    assert items[0]["balanceAfter"] == await get(client, headers, "/customer/c1")


async def test_history_pages_with_a_cursor_and_filters(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    await a_customer_with_every_kind(client, headers, clock)
    everything = await whole_history(client, headers, "c1")
    for limit in (1, 2, 3):
        assert await whole_history(client, headers, "c1", limit=limit) == everything
    expired = await whole_history(client, headers, "c1", kind="expired,deducted")
    assert [i["kind"] for i in expired] == ["expired", "deducted", "expired"]
    assert await whole_history(client, headers, "c1", limit=1, kind=["expired"]) == [
        i for i in everything if i["kind"] == "expired"
    ]
    middle = everything[2]["createdAt"]
    assert await whole_history(client, headers, "c1", to=middle) == everything[3:]
    assert await whole_history(client, headers, "c1", **{"from": middle}) == everything[:3]


async def test_history_refuses_what_it_cannot_read(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await ok(client, headers, "c1", "addPoints", points=1)
    for params in (
        {"cursor": "not-a-cursor"},
        {"kind": "bonus"},
        {"limit": 0},
        {"limit": 1001},
        {"from": "yesterday"},
    ):
        response = await client.get(url("c1", "/history"), params=params, headers=headers)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["title"] == "Bad Request"
    response = await client.get(url("c2", "/history"), headers=headers)
    assert response.status_code == 404
    assert response.json()["message"] == "No reward points found for customer c2"


async def test_a_customer_token_records_the_customer_as_actor(
    client: httpx.AsyncClient, headers: Headers, tenant: str
) -> None:
    await ok(client, headers, "c1", "addPoints", points=5)
    employee = bearer(token(tenant, subject="jane@shop.example"))
    await ok(client, employee, "c1", "addPoints", points=5)
    items = await whole_history(client, headers, "c1")
    assert [i["actor"] for i in items] == ["jane@shop.example", f"{tenant}-operator"]


async def test_the_balance_at_an_instant_is_the_balance_as_it_stood_then(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    start = clock.now
    valid_until = await a_customer_with_every_kind(client, headers, clock)
    items = await whole_history(client, headers, "c1")
    for item in items:
        moment = datetime.fromisoformat(item["createdAt"])
        # The last entry at an instant is the first listed: what stood at that instant.
        last_then = next(i for i in items if i["createdAt"] == item["createdAt"])
        answer = await get(client, headers, "/customer/c1/balance", at=at(moment))
        assert answer == {
            "customerId": "c1",
            "activePoints": last_then["balanceAfter"],
            "at": item["createdAt"],
        }
    # Just before l1 expired, and before the first entry.
    before_expiry = await get(
        client, headers, "/customer/c1/balance", at=at(valid_until - timedelta(seconds=1))
    )
    assert before_expiry["activePoints"] == 25
    earlier = await get(client, headers, "/customer/c1/balance", at=at(start - timedelta(days=1)))
    assert earlier["activePoints"] == 0
    now = await get(client, headers, "/customer/c1/balance")
    assert now["activePoints"] == await get(client, headers, "/customer/c1") == 17


async def test_expiring_points_of_a_customer_and_of_the_tenant(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    def days(n: int) -> str:
        return at(clock.now + timedelta(days=n))

    await ok(client, headers, "c2", "addPoints", id="a", points=10, validUntil=days(5))
    await ok(client, headers, "c2", "addPoints", id="b", points=10, validUntil=days(10))
    await ok(client, headers, "c2", "addPoints", id="c", points=10, validUntil=days(40))
    await ok(client, headers, "c2", "redeemPoints", points=12)  # a used up, b half
    soonest = days(3)
    await ok(client, headers, "c1", "addPoints", id="x", points=7, validUntil=soonest)
    await ok(client, headers, "c3", "addPoints", id="y", points=7, validUntil=days(60))
    before = days(30)
    mine = await get(client, headers, "/customer/c2/expiringPoints", before=before)
    assert mine["customerId"] == "c2"
    assert mine["totalPoints"] == 8
    assert [(lot["id"], lot["points"]) for lot in mine["lots"]] == [("b", 8)]
    tenant_wide = await get(client, headers, "/expiringPoints", before=before)
    assert [(c["customerId"], c["totalPoints"]) for c in tenant_wide] == [("c1", 7), ("c2", 8)]
    assert tenant_wide[0]["earliestValidUntil"] == datetime.fromisoformat(soonest).isoformat(
        timespec="milliseconds"
    )
    response = await client.get(
        url("c9", "/expiringPoints"), params={"before": before}, headers=headers
    )
    assert response.status_code == 404
    response = await client.get(f"{BASE}/expiringPoints", headers=headers)
    assert response.status_code == 400  # before is required
    clock.advance(days=100)
    assert await get(client, headers, "/expiringPoints", before=days(1)) == []


# ---- dry runs ------------------------------------------------------------------------------


async def used_points(client: httpx.AsyncClient, headers: Headers, customer: str) -> dict[str, int]:
    document = await get(client, headers, f"/customer/{customer}/summary")
    return {lot["id"]: lot["usedPoints"] for lot in document["summary"]["addedPointsList"]}


async def dry_then_real(
    client: httpx.AsyncClient, headers: Headers, customer: str, action: str, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """The dry run's answer, and the lots' usedPoints before and after the real call."""
    before = await used_points(client, headers, customer)
    history = await whole_history(client, headers, customer)
    dry = await client.post(
        url(customer, f"/{action}"), params={"dryRun": "true"}, json=body, headers=headers
    )
    assert dry.status_code == 200, dry.text
    # Nothing written: not the lots, not the history.
    assert await used_points(client, headers, customer) == before
    assert await whole_history(client, headers, customer) == history
    real = await client.post(url(customer, f"/{action}"), json=body, headers=headers)
    assert real.status_code == 201, real.text  # the id was not consumed
    after = await used_points(client, headers, customer)
    balance = await get(client, headers, f"/customer/{customer}")
    preview = dry.json()
    assert preview["balanceAfter"] == balance
    return preview, before, after


async def test_a_dry_run_predicts_what_the_write_then_does(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    created = await client.post(url("c1"), headers=headers)
    assert created.status_code == 200, created.text
    preview, _, after = await dry_then_real(
        client, headers, "c1", "addPoints", {"id": "l1", "points": 10}
    )
    assert preview == {"balanceBefore": 0, "balanceAfter": 10, "lots": [{"id": "l1", "points": 10}]}
    await ok(client, headers, "c1", "addPoints", id="l2", points=10)
    await ok(client, headers, "c1", "addPoints", id="l3", points=10)

    preview, before, after = await dry_then_real(
        client, headers, "c1", "redeemPoints", {"id": "r1", "points": 15}
    )
    assert preview["balanceBefore"] == 30
    assert preview["lots"] == [{"id": "l1", "points": 10}, {"id": "l2", "points": 5}]
    drawn = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert drawn == {lot["id"]: lot["points"] for lot in preview["lots"]}

    preview, before, after = await dry_then_real(
        client, headers, "c1", "deductPoints", {"id": "d1", "points": 8, "lotId": "l3"}
    )
    assert preview["lots"] == [{"id": "l3", "points": 8}]
    drawn = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert drawn == {"l3": 8}

    preview, before, after = await dry_then_real(
        client, headers, "c1", "reversePoints", {"id": "v1", "redemptionId": "r1", "points": 9}
    )
    assert preview["lots"] == [{"id": "l2", "points": 5}, {"id": "l1", "points": 4}]
    given = {k: before[k] - after[k] for k in after if after[k] != before[k]}
    assert given == {lot["id"]: lot["points"] for lot in preview["lots"]}


async def test_a_dry_run_is_refused_as_the_write_would_be(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await ok(client, headers, "c1", "addPoints", id="l1", points=10)
    for action, body, status in (
        ("redeemPoints", {"points": 11}, 400),
        ("deductPoints", {"points": 11}, 400),
        ("reversePoints", {"redemptionId": "r9"}, 404),
        ("addPoints", {"id": "l1", "points": 3}, 409),
        ("redeemPoints", {"points": 1, "id": "l1"}, 409),
    ):
        dry = await client.post(url("c1", f"/{action}?dryRun=true"), json=body, headers=headers)
        real = await client.post(url("c1", f"/{action}"), json=body, headers=headers)
        assert dry.status_code == real.status_code == status, (action, dry.text)
        assert dry.json() == real.json()
    # A retry changes nothing, and its dry run says so.
    dry = await client.post(
        url("c1", "/addPoints?dryRun=true"), json={"id": "l1", "points": 10}, headers=headers
    )
    assert dry.json() == {"balanceBefore": 10, "balanceAfter": 10, "lots": []}
