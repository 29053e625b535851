"""Reversing a redemption and deducting points (the clawback for a return), through the HTTP
API on the real database: which lots get points back or give them, how an Emporix summary shows
it, what is refused, retries by id, and the negative balance a site may allow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from .conftest import served
from .support import FakeClock

Headers = dict[str, str]
BASE = "/reward-points"


def url(customer_id: str, action: str = "") -> str:
    return f"{BASE}/customer/{customer_id}{action}"


async def post(
    client: httpx.AsyncClient, headers: Headers, customer: str, action: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(url(customer, f"/{action}"), json=body, headers=headers)


async def ok(
    client: httpx.AsyncClient, headers: Headers, customer: str, action: str, **body: Any
) -> Any:
    response = await post(client, headers, customer, action, body)
    assert response.status_code == 201, response.text
    return response.json() if response.content else None


async def summary(client: httpx.AsyncClient, headers: Headers, customer: str) -> Any:
    response = await client.get(url(customer, "/summary"), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def balance(client: httpx.AsyncClient, headers: Headers, customer: str) -> int:
    response = await client.get(url(customer), headers=headers)
    assert response.status_code == 200, response.text
    value = response.json()
    assert isinstance(value, int)
    return value


def lots_of(document: Any) -> dict[str, tuple[int, list[str]]]:
    return {
        lot["id"]: (lot["usedPoints"], lot["usedWith"])
        for lot in document["summary"]["addedPointsList"]
    }


def redemptions_of(document: Any) -> dict[str, int]:
    return {r["id"]: r["points"] for r in document["summary"]["redeemedPointsList"]}


async def two_lots_and_a_redemption(
    client: httpx.AsyncClient, headers: Headers, customer: str
) -> None:
    await ok(client, headers, customer, "addPoints", id="l1", points=10)
    await ok(client, headers, customer, "addPoints", id="l2", points=10)
    await ok(client, headers, customer, "redeemPoints", id="r1", points=15)


# ---- reversePoints -------------------------------------------------------------------------


async def test_reverse_gives_points_back_to_the_lots_newest_first(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await two_lots_and_a_redemption(client, headers, "c1")
    answer = await ok(client, headers, "c1", "reversePoints", redemptionId="r1", points=7, id="v1")
    assert answer == {"id": "v1", "restoredPoints": 7, "expiredPoints": 0}
    assert await balance(client, headers, "c1") == 12
    document = await summary(client, headers, "c1")
    # r1 drew 10 from l1, then 5 from l2: the 7 go back to l2 (all 5, so r1 leaves its
    # usedWith) and then 2 to l1.
    assert lots_of(document) == {"l1": (8, ["r1"]), "l2": (0, [])}
    # The redemption shows what it still holds, so the lists add up for an Emporix client.
    assert redemptions_of(document) == {"r1": 8}
    assert document["activePoints"] == 12


async def test_reverse_without_points_gives_back_all_that_is_left_once(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await two_lots_and_a_redemption(client, headers, "c1")
    await ok(client, headers, "c1", "reversePoints", redemptionId="r1", points=4)
    answer = await ok(client, headers, "c1", "reversePoints", redemptionId="r1")
    assert (answer["restoredPoints"], answer["expiredPoints"]) == (11, 0)
    assert await balance(client, headers, "c1") == 20
    assert lots_of(await summary(client, headers, "c1")) == {"l1": (0, []), "l2": (0, [])}

    again = await post(client, headers, "c1", "reversePoints", {"redemptionId": "r1"})
    assert again.status_code == 400, again.text
    assert again.json()["detail"] == "Redemption r1 has no points left to reverse"
    assert await balance(client, headers, "c1") == 20


async def test_reversals_never_add_up_to_more_than_the_redemption_spent(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await two_lots_and_a_redemption(client, headers, "c1")
    await ok(client, headers, "c1", "reversePoints", redemptionId="r1", points=10)
    before = await summary(client, headers, "c1")
    response = await post(
        client, headers, "c1", "reversePoints", {"redemptionId": "r1", "points": 6}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == "Cannot reverse 6 points of redemption r1: 5 left to reverse"
    assert body["errors"] == [{"field": "points", "message": body["detail"]}]
    assert await summary(client, headers, "c1") == before


async def test_reversing_an_unknown_redemption_or_customer_is_a_404(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await two_lots_and_a_redemption(client, headers, "c1")
    await ok(client, headers, "c1", "deductPoints", id="d1", points=1)
    for redemption in ("nope", "l1", "d1"):  # a lot and a deduction are no redemptions
        response = await post(client, headers, "c1", "reversePoints", {"redemptionId": redemption})
        assert response.status_code == 404, response.text
        assert response.json() == {
            "type": "resource_not_found",
            "status": 404,
            "message": f"No redemption {redemption} found for customer c1",
        }
    response = await post(client, headers, "c2", "reversePoints", {"redemptionId": "r1"})
    assert response.status_code == 404
    assert response.json()["message"] == "No reward points found for customer c2"


async def test_a_lot_expired_since_takes_its_share_back_expired(
    client: httpx.AsyncClient, headers: Headers, clock: FakeClock
) -> None:
    soon = (clock.now + timedelta(days=1)).isoformat()
    await ok(client, headers, "c1", "addPoints", id="l1", points=10, validUntil=soon)
    await ok(client, headers, "c1", "addPoints", id="l2", points=10)
    await ok(client, headers, "c1", "redeemPoints", id="r1", points=14)
    clock.advance(days=2)
    assert await balance(client, headers, "c1") == 6
    answer = await ok(client, headers, "c1", "reversePoints", redemptionId="r1")
    # l2 gets its 4 back and counts; l1, expired, takes its 10 back but they do not count.
    assert (answer["restoredPoints"], answer["expiredPoints"]) == (4, 10)
    assert await balance(client, headers, "c1") == 10
    document = await summary(client, headers, "c1")
    assert lots_of(document) == {"l1": (0, []), "l2": (0, [])}
    assert document["activePoints"] == 10


async def test_a_reversal_sent_again_answers_as_the_first_time(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await two_lots_and_a_redemption(client, headers, "c1")
    body = {"redemptionId": "r1", "points": 3, "id": "v1", "reason": "order cancelled"}
    first = await post(client, headers, "c1", "reversePoints", body)
    second = await post(client, headers, "c1", "reversePoints", body)
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert await balance(client, headers, "c1") == 8
    # The same id with other content, or the id of another entry, is a 409.
    for other in ({**body, "points": 4}, {"redemptionId": "r1", "points": 1, "id": "l1"}):
        response = await post(client, headers, "c1", "reversePoints", other)
        assert response.status_code == 409, response.text
    assert await balance(client, headers, "c1") == 8
    # And a reversal's id is taken for lots and redemptions too.
    response = await post(client, headers, "c1", "addPoints", {"points": 1, "id": "v1"})
    assert response.status_code == 409


# ---- deductPoints --------------------------------------------------------------------------


async def test_deduct_takes_from_the_named_lot_first_then_oldest_first(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    for lot in ("l1", "l2", "l3"):
        await ok(client, headers, "c1", "addPoints", id=lot, points=10)
    answer = await ok(
        client,
        headers,
        "c1",
        "deductPoints",
        id="d1",
        points=15,
        lotId="l2",
        **{"reference-id": "return-7"},
    )
    assert answer == {"id": "d1", "points": 15, "balanceAfter": 15}
    document = await summary(client, headers, "c1")
    assert lots_of(document) == {"l1": (5, ["d1"]), "l2": (10, ["d1"]), "l3": (0, [])}
    # An Emporix client sees the deduction among the redemptions, so its sums stay right.
    (entry,) = document["summary"]["redeemedPointsList"]
    assert (entry["id"], entry["points"], entry["description"]) == ("d1", 15, "points deducted")
    assert entry["allPointsAfterCreation"] == 15
    assert await balance(client, headers, "c1") == 15


async def test_deducting_more_than_the_balance_is_refused_by_default(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await ok(client, headers, "c1", "addPoints", id="l1", points=10)
    before = await summary(client, headers, "c1")
    response = await post(client, headers, "c1", "deductPoints", {"points": 11})
    assert response.status_code == 400
    assert response.json()["detail"] == "Not enough reward points: requested 11, available 10"
    assert await summary(client, headers, "c1") == before
    response = await post(client, headers, "c1", "deductPoints", {"points": 1, "lotId": "l9"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "lotId"
    response = await post(client, headers, "c2", "deductPoints", {"points": 1})
    assert response.status_code == 404
    assert await summary(client, headers, "c1") == before


async def test_with_a_negative_balance_allowed_the_shortfall_is_paid_by_the_next_additions(
    database_url: str, headers: Headers, clock: FakeClock
) -> None:
    async with served(database_url, clock, negative_balance="allow") as client:
        await ok(client, headers, "c1", "addPoints", id="l1", points=10)
        answer = await ok(client, headers, "c1", "deductPoints", id="d1", points=25)
        assert answer == {"id": "d1", "points": 25, "balanceAfter": -15}
        assert await balance(client, headers, "c1") == -15
        assert (await summary(client, headers, "c1"))["activePoints"] == -15
        # Nothing to redeem while in debt.
        response = await post(client, headers, "c1", "redeemPoints", {"points": 1})
        assert response.status_code == 400
        assert response.json()["detail"] == "Not enough reward points: requested 1, available -15"

        await ok(client, headers, "c1", "addPoints", id="l2", points=10)
        assert await balance(client, headers, "c1") == -5
        await ok(client, headers, "c1", "addPoints", id="l3", points=8)
        assert await balance(client, headers, "c1") == 3
        document = await summary(client, headers, "c1")
        assert lots_of(document) == {"l1": (10, ["d1"]), "l2": (10, ["d1"]), "l3": (5, ["d1"])}
        assert document["activePoints"] == 3
        assert [
            entry["allPointsAfterCreation"] for entry in document["summary"]["addedPointsList"]
        ] == [10, -5, 3]
        # The stored balance and the lots agree once the stored one no longer applies.
        clock.advance(days=365 * 40)
        assert await balance(client, headers, "c1") == 0


async def test_a_site_may_allow_a_negative_balance(
    database_url: str, headers: Headers, tmp_path: Any
) -> None:
    sites = tmp_path / "sites.json"
    sites.write_text('{"main": {}, "outlet": {"negativeBalance": "allow"}}')
    async with served(database_url, sites_file=sites) as client:
        await ok(client, headers, "c1", "addPoints", points=10)
        refused = await client.post(
            url("c1", "/deductPoints"), json={"points": 12}, headers=headers
        )
        assert refused.status_code == 400
        allowed = await client.post(
            url("c1", "/deductPoints?siteCode=outlet"), json={"points": 12}, headers=headers
        )
        assert allowed.status_code == 201, allowed.text
        assert await balance(client, headers, "c1") == -2


async def test_a_deduction_sent_again_answers_as_the_first_time(
    client: httpx.AsyncClient, headers: Headers
) -> None:
    await ok(client, headers, "c1", "addPoints", id="l1", points=10)
    body = {"id": "d1", "points": 4, "reason": "goods returned"}
    first = await post(client, headers, "c1", "deductPoints", body)
    await ok(client, headers, "c1", "addPoints", id="l2", points=10)
    second = await post(client, headers, "c1", "deductPoints", body)
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert await balance(client, headers, "c1") == 16
    response = await post(client, headers, "c1", "deductPoints", {**body, "points": 5})
    assert response.status_code == 409


@pytest.mark.parametrize("action", ["reversePoints", "deductPoints"])
async def test_the_new_writes_need_the_manage_scope(
    client: httpx.AsyncClient, make_headers: Any, tenant: str, action: str
) -> None:
    from .conftest import VIEW

    response = await client.post(
        url("c1", f"/{action}"),
        json={"points": 1, "redemptionId": "r1"},
        headers=make_headers(tenant, VIEW),
    )
    assert response.status_code == 403
