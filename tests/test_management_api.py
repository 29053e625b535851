"""The Reward Points Management endpoints on the wire: status codes, bodies and headers as
Emporix answers them, erasure, tenant isolation and the batch summary. Runs on both databases."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

Headers = dict[str, str]

BASE = "/reward-points"

SUMMARY_KEYS = {"customerId", "activePoints", "summary"}
LISTS_KEYS = {"addedPointsList", "redeemedPointsList"}
ADDED_KEYS = {
    "id",
    "reference-id",
    "description",
    "points",
    "createdAt",
    "allPointsAfterCreation",
    "usedPoints",
    "validUntil",
    "usedWith",
}
REDEEMED_KEYS = {"id", "description", "points", "createdAt", "allPointsAfterCreation"}
BAD_REQUEST_KEYS = {"type", "title", "status", "detail", "instance", "errors"}


def url(customer_id: str, action: str = "") -> str:
    return f"{BASE}/customer/{quote(customer_id, safe='')}{action}"


def not_found_body(customer_id: str) -> dict[str, Any]:
    return {
        "type": "resource_not_found",
        "status": 404,
        "message": f"No reward points found for customer {customer_id}",
    }


def entry_exists_body(customer_id: str) -> dict[str, Any]:
    return {
        "status": 409,
        "type": "application/json",
        "message": "New Reward Point Entry not Created",
        "moreInfo": "",
        "details": [
            {
                "field": None,
                "type": None,
                "message": (
                    f"Couldn't create a new reward point entry for the customer '{customer_id}'"
                ),
                "moreInfo": "",
            }
        ],
    }


def other_tenant() -> str:
    return "u" + secrets.token_hex(5)


async def create(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, body: Any = None
) -> httpx.Response:
    return await client.post(
        url(customer_id), params={"siteCode": "main"}, json=body, headers=headers
    )


async def add(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, points: int, **fields: Any
) -> None:
    response = await client.post(
        url(customer_id, "/addPoints"), json={"points": points, **fields}, headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.content == b""


async def redeem(
    client: httpx.AsyncClient, headers: Headers, customer_id: str, points: int, **fields: Any
) -> None:
    response = await client.post(
        url(customer_id, "/redeemPoints"), json={"points": points, **fields}, headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.content == b""


async def balance(client: httpx.AsyncClient, headers: Headers, customer_id: str) -> int:
    response = await client.get(url(customer_id), headers=headers)
    assert response.status_code == 200, response.text
    value = response.json()
    assert type(value) is int
    return value


async def summary(client: httpx.AsyncClient, headers: Headers, customer_id: str) -> dict[str, Any]:
    response = await client.get(url(customer_id, "/summary"), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


async def batch(client: httpx.AsyncClient, headers: Headers) -> list[dict[str, Any]]:
    response = await client.get(f"{BASE}/summaryBatch", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: list[dict[str, Any]] = response.json()
    return body


def empty_summary(customer_id: str) -> dict[str, Any]:
    return {
        "customerId": customer_id,
        "activePoints": 0,
        "summary": {"addedPointsList": [], "redeemedPointsList": []},
    }


# ---- GET /customer/{id} ---------------------------------------------------------------------


async def test_balance_is_a_bare_json_integer(client: httpx.AsyncClient, headers: Headers) -> None:
    await add(client, headers, "c1", 100)
    await add(client, headers, "c1", 50)

    response = await client.get(url("c1"), headers=headers)

    assert response.status_code == 200
    assert response.content == b"150"
    assert response.headers["content-type"] == "application/json"


async def test_balance_subtracts_redeemed_points(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 100)
    await redeem(client, headers, "c1", 35)

    response = await client.get(url("c1"), headers=headers)

    assert response.content == b"65"


async def test_balance_of_an_entry_without_lots_is_zero(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    assert (await create(client, headers, "c1")).status_code == 200

    response = await client.get(url("c1"), headers=headers)

    assert response.status_code == 200
    assert response.content == b"0"


async def test_unknown_customer_is_404_on_every_endpoint_that_needs_an_entry(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    answers = [
        await client.get(url("ghost"), headers=headers),
        await client.get(url("ghost", "/summary"), headers=headers),
        await client.post(url("ghost", "/redeemPoints"), json={"points": 1}, headers=headers),
        await client.delete(url("ghost"), headers=headers),
    ]

    for response in answers:
        assert response.status_code == 404, response.request.url
        assert response.headers["content-type"] == "application/json"
        assert response.json() == not_found_body("ghost")
    # None of them created the entry.
    assert (await client.get(url("ghost"), headers=headers)).status_code == 404
    assert await batch(client, headers) == []


# ---- POST /customer/{id} --------------------------------------------------------------------


async def test_create_entry_answers_200_with_an_empty_body(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await create(client, headers, "c1")

    assert response.status_code == 200
    assert response.content == b""
    assert await summary(client, headers, "c1") == empty_summary("c1")


async def test_create_entry_accepts_an_empty_object_and_a_matching_customer_id(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    first = await create(client, headers, "c1", {})
    second = await create(client, headers, "c2", {"customerId": "c2"})

    assert (first.status_code, first.content) == (200, b"")
    assert (second.status_code, second.content) == (200, b"")
    assert [s["customerId"] for s in await batch(client, headers)] == ["c1", "c2"]


async def test_create_entry_with_start_points_credits_one_lot(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await create(
        client,
        headers,
        "c1",
        {
            "customerId": "c1",
            "startPoints": {
                "id": "welcome-c1",
                "reference-id": "SIGNUP-1",
                "description": "welcome bonus",
                "points": 150,
            },
        },
    )

    assert response.status_code == 200
    assert response.content == b""
    assert await balance(client, headers, "c1") == 150
    result = await summary(client, headers, "c1")
    assert result["activePoints"] == 150
    assert result["summary"]["redeemedPointsList"] == []
    [lot] = result["summary"]["addedPointsList"]
    assert {k: v for k, v in lot.items() if k not in ("createdAt", "validUntil")} == {
        "id": "welcome-c1",
        "reference-id": "SIGNUP-1",
        "description": "welcome bonus",
        "points": 150,
        "allPointsAfterCreation": 150,
        "usedPoints": 0,
        "usedWith": [],
    }


async def test_create_entry_start_points_without_description_gets_the_default(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await create(client, headers, "c1", {"startPoints": {"points": 20}})

    assert response.status_code == 200
    [lot] = (await summary(client, headers, "c1"))["summary"]["addedPointsList"]
    assert lot["description"] == "points added"
    assert lot["reference-id"] is None
    assert lot["allPointsAfterCreation"] == 20


async def test_create_entry_twice_answers_emporix_409_and_keeps_the_entry(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    assert (
        await create(client, headers, "20242913", {"startPoints": {"points": 10}})
    ).status_code == 200
    before = await summary(client, headers, "20242913")

    again = await create(client, headers, "20242913")
    with_points = await create(client, headers, "20242913", {"startPoints": {"points": 99}})

    for response in (again, with_points):
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/json"
        assert response.json() == entry_exists_body("20242913")
    assert await summary(client, headers, "20242913") == before
    assert await balance(client, headers, "20242913") == 10


async def test_create_entry_after_add_points_created_it_is_409(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 5)

    response = await create(client, headers, "c1")

    assert response.status_code == 409
    assert response.json() == entry_exists_body("c1")


async def test_create_entry_with_body_customer_id_differing_from_path_is_400(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    plain = await create(client, headers, "c1", {"customerId": "c2"})
    with_points = await create(
        client, headers, "c1", {"customerId": "c2", "startPoints": {"points": 10}}
    )

    for response in (plain, with_points):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) <= BAD_REQUEST_KEYS
        assert body["type"] == "about:blank"
        assert body["title"] == "Bad Request"
        assert body["status"] == 400
        assert body["instance"] == "/customer/c1"
        assert "customerId" in body["detail"]
    # Nothing was created under either id.
    assert (await client.get(url("c1"), headers=headers)).json() == not_found_body("c1")
    assert (await client.get(url("c2"), headers=headers)).json() == not_found_body("c2")


async def test_create_entry_with_unknown_site_code_is_400_and_creates_nothing(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.post(url("c1"), params={"siteCode": "nosuchsite"}, headers=headers)

    assert response.status_code == 400
    assert response.json()["instance"] == "/customer/c1"
    assert (await client.get(url("c1"), headers=headers)).status_code == 404


async def test_create_entry_whose_start_lot_id_another_customer_uses_is_a_lot_of_its_own(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    """Entry ids are unique per customer: Emporix's own examples give startPoints and
    addPoints the same id."""
    await add(client, headers, "owner", 10, id="lot-1")

    response = await create(client, headers, "c1", {"startPoints": {"id": "lot-1", "points": 7}})

    assert response.status_code == 200
    assert await balance(client, headers, "c1") == 7
    assert await balance(client, headers, "owner") == 10
    lots = (await summary(client, headers, "c1"))["summary"]["addedPointsList"]
    assert [(lot["id"], lot["points"]) for lot in lots] == [("lot-1", 7)]


# ---- DELETE /customer/{id} ------------------------------------------------------------------


async def test_delete_erases_the_entry_with_all_its_lots_and_redemptions(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "gone", 100, id="gone-lot-1")
    await add(client, headers, "gone", 50, id="gone-lot-2")
    await redeem(client, headers, "gone", 120, id="gone-red-1")
    await add(client, headers, "kept", 70, id="kept-lot-1")
    kept_before = await summary(client, headers, "kept")

    response = await client.delete(url("gone"), headers=headers)

    assert response.status_code == 200
    assert response.content == b""
    assert (await client.get(url("gone"), headers=headers)).json() == not_found_body("gone")
    assert (await client.get(url("gone", "/summary"), headers=headers)).json() == not_found_body(
        "gone"
    )
    assert await batch(client, headers) == [kept_before]
    again = await client.delete(url("gone"), headers=headers)
    assert (again.status_code, again.json()) == (404, not_found_body("gone"))
    # The customer can start over from nothing.
    assert (await create(client, headers, "gone")).status_code == 200
    assert await summary(client, headers, "gone") == empty_summary("gone")


async def test_deleted_customer_entry_ids_can_be_used_again(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 100, id="lot-1", description="first life")
    await redeem(client, headers, "c1", 40, id="red-1")
    assert (await client.delete(url("c1"), headers=headers)).status_code == 200

    # Other content under the same ids would be a 409 if anything of the old entries were left.
    await add(client, headers, "c1", 30, id="lot-1", description="second life")
    await redeem(client, headers, "c1", 5, id="red-1", description="second redemption")

    result = await summary(client, headers, "c1")
    assert result["activePoints"] == 25
    [lot] = result["summary"]["addedPointsList"]
    [redemption] = result["summary"]["redeemedPointsList"]
    assert (lot["id"], lot["points"], lot["description"]) == ("lot-1", 30, "second life")
    assert (lot["usedPoints"], lot["usedWith"], lot["allPointsAfterCreation"]) == (5, ["red-1"], 30)
    assert (redemption["id"], redemption["points"]) == ("red-1", 5)
    assert redemption["allPointsAfterCreation"] == 25


# ---- GET /customer/{id}/summary -------------------------------------------------------------


async def test_summary_has_exactly_the_emporix_keys(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 209, **{"reference-id": "B7011746"}, description="order bonus")
    await add(client, headers, "c1", 50)
    await redeem(client, headers, "c1", 100, description="voucher")

    response = await client.get(url("c1", "/summary"), headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    # Nulls and empty lists are written out, not left away.
    assert b'"reference-id":null' in response.content.replace(b" ", b"")
    assert b'"usedWith":[]' in response.content.replace(b" ", b"")
    body = response.json()
    assert set(body) == SUMMARY_KEYS
    assert set(body["summary"]) == LISTS_KEYS
    first, second = body["summary"]["addedPointsList"]
    [redemption] = body["summary"]["redeemedPointsList"]
    assert set(first) == ADDED_KEYS
    assert set(second) == ADDED_KEYS
    assert set(redemption) == REDEEMED_KEYS
    assert body["customerId"] == "c1"
    assert body["activePoints"] == 159
    assert first["reference-id"] == "B7011746"
    assert first["description"] == "order bonus"
    assert first["usedWith"] == [redemption["id"]]
    assert second["reference-id"] is None
    assert second["usedWith"] == []
    assert redemption["description"] == "voucher"


# ---- POST /customer/{id}/addPoints and /redeemPoints ----------------------------------------


async def test_add_points_answers_201_empty_and_creates_the_missing_entry(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    assert (await client.get(url("new"), headers=headers)).status_code == 404

    response = await client.post(
        url("new", "/addPoints"), params={"siteCode": "main"}, json={"points": 42}, headers=headers
    )

    assert response.status_code == 201
    assert response.content == b""
    assert await balance(client, headers, "new") == 42
    assert [s["customerId"] for s in await batch(client, headers)] == ["new"]


async def test_add_points_to_an_existing_entry_adds_a_lot(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    assert (await create(client, headers, "c1")).status_code == 200

    await add(client, headers, "c1", 12)
    await add(client, headers, "c1", 30)

    result = await summary(client, headers, "c1")
    assert [lot["points"] for lot in result["summary"]["addedPointsList"]] == [12, 30]
    assert result["activePoints"] == 42


async def test_redeem_points_answers_201_empty_and_lowers_the_balance(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "c1", 100)

    response = await client.post(url("c1", "/redeemPoints"), json={"points": 30}, headers=headers)

    assert response.status_code == 201
    assert response.content == b""
    assert await balance(client, headers, "c1") == 70
    [redemption] = (await summary(client, headers, "c1"))["summary"]["redeemedPointsList"]
    assert (redemption["points"], redemption["allPointsAfterCreation"]) == (30, 70)


async def test_redeem_points_for_a_customer_without_entry_is_404_and_creates_nothing(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await add(client, headers, "someone-else", 100)

    response = await client.post(
        url("202429132", "/redeemPoints"), json={"points": 1}, headers=headers
    )

    assert response.status_code == 404
    assert response.json() == not_found_body("202429132")
    assert (await client.get(url("202429132"), headers=headers)).status_code == 404
    assert await balance(client, headers, "someone-else") == 100


# ---- tenant isolation -----------------------------------------------------------------------


async def _tenant_a_customer(client: httpx.AsyncClient, headers: Headers) -> dict[str, Any]:
    await add(client, headers, "shared", 100, id="lot-1", **{"reference-id": "A-ORDER"})
    await redeem(client, headers, "shared", 30, id="red-1")
    return await summary(client, headers, "shared")


async def test_other_tenant_cannot_read_a_customer(
    client: httpx.AsyncClient,
    headers: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    a_summary = await _tenant_a_customer(client, headers)
    b = make_headers(other_tenant())

    balance_b = await client.get(url("shared"), headers=b)
    summary_b = await client.get(url("shared", "/summary"), headers=b)
    batch_b = await client.get(f"{BASE}/summaryBatch", headers=b)

    assert (balance_b.status_code, balance_b.json()) == (404, not_found_body("shared"))
    assert (summary_b.status_code, summary_b.json()) == (404, not_found_body("shared"))
    assert (batch_b.status_code, batch_b.content) == (200, b"[]")
    assert await batch(client, headers) == [a_summary]


async def test_other_tenant_cannot_redeem_or_delete_a_customer(
    client: httpx.AsyncClient,
    headers: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    a_summary = await _tenant_a_customer(client, headers)
    b = make_headers(other_tenant())

    redeemed = await client.post(url("shared", "/redeemPoints"), json={"points": 10}, headers=b)
    deleted = await client.delete(url("shared"), headers=b)

    assert (redeemed.status_code, redeemed.json()) == (404, not_found_body("shared"))
    assert (deleted.status_code, deleted.json()) == (404, not_found_body("shared"))
    assert await summary(client, headers, "shared") == a_summary
    assert await balance(client, headers, "shared") == 70


async def test_same_customer_id_in_another_tenant_is_a_separate_entry(
    client: httpx.AsyncClient,
    headers: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    a_summary = await _tenant_a_customer(client, headers)
    b = make_headers(other_tenant())

    created = await create(client, b, "shared")
    assert (created.status_code, created.content) == (200, b"")
    assert await summary(client, b, "shared") == empty_summary("shared")
    # Entry ids are per tenant: A's ids with other content are free in B.
    await add(client, b, "shared", 500, id="lot-1")
    await redeem(client, b, "shared", 20, id="red-1")

    assert await balance(client, b, "shared") == 480
    assert await balance(client, headers, "shared") == 70
    assert await summary(client, headers, "shared") == a_summary
    b_summary = await summary(client, b, "shared")
    [b_lot] = b_summary["summary"]["addedPointsList"]
    assert (b_lot["points"], b_lot["reference-id"], b_lot["usedWith"]) == (500, None, ["red-1"])
    assert await batch(client, headers) == [a_summary]
    assert await batch(client, b) == [b_summary]

    # Deleting B's customer leaves A's alone.
    assert (await client.delete(url("shared"), headers=b)).status_code == 200
    assert (await client.get(url("shared"), headers=b)).status_code == 404
    assert await summary(client, headers, "shared") == a_summary


async def test_add_points_in_another_tenant_does_not_touch_the_first(
    client: httpx.AsyncClient,
    headers: Headers,
    make_headers: Callable[..., Headers],
) -> None:
    a_summary = await _tenant_a_customer(client, headers)
    b = make_headers(other_tenant())

    await add(client, b, "shared", 5)
    created_in_a = await create(client, headers, "shared")

    assert await balance(client, b, "shared") == 5
    assert await balance(client, headers, "shared") == 70
    assert await summary(client, headers, "shared") == a_summary
    # B's addPoints created B's entry only; A's entry still exists exactly once.
    assert created_in_a.status_code == 409
    assert (await create(client, b, "shared")).status_code == 409


# ---- GET /summaryBatch ----------------------------------------------------------------------


async def test_summary_batch_of_an_empty_tenant_is_an_empty_list(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    response = await client.get(f"{BASE}/summaryBatch", headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b"[]"


async def test_summary_batch_orders_customers_bytewise(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    ids = ["b", "a1", "B", "a", "Z9", "_x", "10", "9", "ä", "a-", "A"]
    for customer_id in ids:
        assert (await create(client, headers, customer_id)).status_code == 200

    result = await batch(client, headers)

    assert [s["customerId"] for s in result] == [
        "10",
        "9",
        "A",
        "B",
        "Z9",
        "_x",
        "a",
        "a-",
        "a1",
        "b",
        "ä",
    ]


async def test_summary_batch_lists_entries_in_created_order(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    # Ids run against creation order, so id order would show.
    await add(client, headers, "c1", 10, id="z-first")
    await add(client, headers, "c1", 20, id="m-second")
    await redeem(client, headers, "c1", 5, id="zz-red-first")
    await add(client, headers, "c1", 30, id="a-third")
    await redeem(client, headers, "c1", 5, id="aa-red-second")

    [result] = await batch(client, headers)

    lists = result["summary"]
    assert [lot["id"] for lot in lists["addedPointsList"]] == ["z-first", "m-second", "a-third"]
    assert [r["id"] for r in lists["redeemedPointsList"]] == ["zz-red-first", "aa-red-second"]
    created = [e["createdAt"] for e in lists["addedPointsList"]]
    assert created == sorted(created)
    assert lists["addedPointsList"][0]["usedWith"] == ["zz-red-first", "aa-red-second"]
    assert result == await summary(client, headers, "c1")


async def test_summary_batch_includes_a_customer_without_lots(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    assert (await create(client, headers, "empty")).status_code == 200
    await add(client, headers, "full", 10)

    result = await batch(client, headers)

    assert result[0] == empty_summary("empty")
    assert result[1]["customerId"] == "full"
    assert result[1]["activePoints"] == 10


async def test_summary_batch_holds_every_customer_of_the_tenant(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    customers = [f"cust-{n:02d}" for n in range(30)]
    for n, customer_id in reversed(list(enumerate(customers))):
        await add(client, headers, customer_id, 10 * (n + 1), id=f"{customer_id}-lot")
        if n % 2 == 0:
            await redeem(client, headers, customer_id, n + 1, id=f"{customer_id}-red")

    result = await batch(client, headers)

    assert [s["customerId"] for s in result] == customers
    for n, entry in enumerate(result):
        expected_active = 10 * (n + 1) - (n + 1 if n % 2 == 0 else 0)
        assert entry["activePoints"] == expected_active
        [lot] = entry["summary"]["addedPointsList"]
        assert (lot["id"], lot["points"]) == (f"{customers[n]}-lot", 10 * (n + 1))
        redemptions = entry["summary"]["redeemedPointsList"]
        assert [r["id"] for r in redemptions] == ([f"{customers[n]}-red"] if n % 2 == 0 else [])
        assert entry == await summary(client, headers, customers[n])
