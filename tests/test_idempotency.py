"""Exactly-once writes: the Idempotency-Key header (Stripe's semantics) and the body id rule."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from rewardpoints.idempotency import _lock_id
from rewardpoints.models import idempotency_keys

from .support import FakeClock

ADD = "/reward-points/customer/{}/addPoints"
REDEEM = "/reward-points/customer/{}/redeemPoints"


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def balance(client: httpx.AsyncClient, headers: dict[str, str], customer: str) -> Any:
    response = await client.get(f"/reward-points/customer/{customer}", headers=headers)
    return response.json() if response.status_code == 200 else response.status_code


async def test_a_retried_key_is_answered_from_the_first_answer_and_writes_once(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    first = await client.post(ADD.format("c1"), json={"points": 40}, headers=keyed(headers, "k1"))
    again = await client.post(ADD.format("c1"), json={"points": 40}, headers=keyed(headers, "k1"))
    assert (first.status_code, first.content) == (201, b"")
    assert (again.status_code, again.content) == (201, b"")
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await balance(client, headers, "c1") == 40
    summary = (await client.get("/reward-points/customer/c1/summary", headers=headers)).json()
    assert len(summary["summary"]["addedPointsList"]) == 1


async def test_redeem_and_create_replay_too(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    create = [
        await client.post("/reward-points/customer/c2", headers=keyed(headers, "create"))
        for _ in range(2)
    ]
    assert [r.status_code for r in create] == [200, 200]
    await client.post(ADD.format("c2"), json={"points": 100}, headers=headers)
    redeems = [
        await client.post(REDEEM.format("c2"), json={"points": 30}, headers=keyed(headers, "r"))
        for _ in range(3)
    ]
    assert [r.status_code for r in redeems] == [201, 201, 201]
    assert await balance(client, headers, "c2") == 70


async def test_the_same_key_with_another_request_is_422_and_changes_nothing(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await client.post(ADD.format("c1"), json={"points": 40}, headers=keyed(headers, "k"))
    other_body = await client.post(
        ADD.format("c1"), json={"points": 41}, headers=keyed(headers, "k")
    )
    other_customer = await client.post(
        ADD.format("c9"), json={"points": 40}, headers=keyed(headers, "k")
    )
    other_site = await client.post(
        ADD.format("c1") + "?siteCode=main", json={"points": 40}, headers=keyed(headers, "k")
    )
    for response in (other_body, other_customer, other_site):
        assert response.status_code == 422
        body = response.json()
        assert body["status"] == 422 and body["title"] == "Unprocessable Entity"
        assert "Idempotency-Key" in body["detail"]
    assert await balance(client, headers, "c1") == 40
    assert await balance(client, headers, "c9") == 404


async def test_a_refused_request_is_the_answer_to_its_key(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await client.post(ADD.format("c1"), json={"points": 10}, headers=headers)
    refused = await client.post(
        REDEEM.format("c1"), json={"points": 50}, headers=keyed(headers, "r")
    )
    assert refused.status_code == 400
    await client.post(ADD.format("c1"), json={"points": 100}, headers=headers)
    replayed = await client.post(
        REDEEM.format("c1"), json={"points": 50}, headers=keyed(headers, "r")
    )
    assert replayed.status_code == 400
    assert replayed.json() == refused.json()
    assert await balance(client, headers, "c1") == 110


async def test_keys_belong_to_their_tenant(
    client: httpx.AsyncClient, headers: dict[str, str], make_headers: Any, tenant: str
) -> None:
    other = make_headers("o" + tenant[1:])
    await client.post(ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "shared"))
    answer = await client.post(ADD.format("c1"), json={"points": 7}, headers=keyed(other, "shared"))
    assert answer.status_code == 201 and "idempotent-replayed" not in answer.headers
    assert await balance(client, headers, "c1") == 5
    assert await balance(client, other, "c1") == 7


async def test_an_expired_key_runs_again_and_is_pruned(
    app: Any, client: httpx.AsyncClient, headers: dict[str, str], clock: FakeClock
) -> None:
    await client.post(ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "old"))
    clock.advance(hours=23)
    replay = await client.post(ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "old"))
    assert replay.headers.get("idempotent-replayed") == "true"
    clock.advance(hours=2)
    fresh = await client.post(ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "old"))
    assert fresh.status_code == 201 and "idempotent-replayed" not in fresh.headers
    assert await balance(client, headers, "c1") == 10

    await client.post(ADD.format("c1"), json={"points": 1}, headers=keyed(headers, "other"))
    clock.advance(hours=25)
    assert await app.state.idempotency.prune() >= 2
    async with app.state.ledger.engine.connect() as conn:
        left = await conn.scalar(
            select(func.count())
            .select_from(idempotency_keys)
            .where(idempotency_keys.c.key.in_(["old", "other"]))
        )
    assert left == 0


async def test_the_answer_is_stored_with_the_write(
    app: Any, client: httpx.AsyncClient, headers: dict[str, str], tenant: str
) -> None:
    await client.post(ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "atomic"))
    async with app.state.ledger.engine.connect() as conn:
        row = (
            await conn.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.tenant == tenant, idempotency_keys.c.key == "atomic"
                )
            )
        ).one()
    assert row.status == 201 and bytes(row.body) == b""


async def test_a_key_in_use_by_a_running_request_is_409(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await client.post(ADD.format("c1"), json={"points": 100}, headers=headers)
    answers = await asyncio.gather(
        *(
            client.post(REDEEM.format("c1"), json={"points": 10}, headers=keyed(headers, "busy"))
            for _ in range(2)
        )
    )
    assert sorted(r.status_code for r in answers) == [201, 409]
    busy = next(r for r in answers if r.status_code == 409).json()
    assert busy["status"] == 409 and busy["details"][0]["field"] == "Idempotency-Key"
    assert await balance(client, headers, "c1") == 90


async def test_a_key_held_by_another_worker_is_409_on_postgresql(
    pg_url: str, make_headers: Any, tenant: str
) -> None:
    from rewardpoints.app import create_app

    from .conftest import make_settings

    app = create_app(make_settings(pg_url))
    url = make_url(pg_url)
    other_worker = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    headers = make_headers(tenant)
    try:
        await other_worker.execute("SELECT pg_advisory_lock($1)", _lock_id(tenant, "held"))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            answer = await client.post(
                ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "held")
            )
            assert answer.status_code == 409
            assert await balance(client, headers, "c1") == 404
            await other_worker.execute("SELECT pg_advisory_unlock_all()")
            answer = await client.post(
                ADD.format("c1"), json={"points": 5}, headers=keyed(headers, "held")
            )
            assert answer.status_code == 201
    finally:
        await other_worker.close()
        await app.state.ledger.engine.dispose()


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_a_malformed_key_is_400(
    client: httpx.AsyncClient, headers: dict[str, str], key: str
) -> None:
    answer = await client.post(ADD.format("c1"), json={"points": 5}, headers=keyed(headers, key))
    assert answer.status_code == 400
    assert await balance(client, headers, "c1") == 404


async def test_the_same_body_id_sent_ten_times_at_once_credits_once(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    body = {"id": "order-7", "points": 25}
    answers = await asyncio.gather(
        *(client.post(ADD.format("c1"), json=body, headers=headers) for _ in range(10))
    )
    assert [r.status_code for r in answers] == [201] * 10
    assert await balance(client, headers, "c1") == 25


async def test_the_same_redemption_id_sent_ten_times_at_once_spends_once(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await client.post(ADD.format("c1"), json={"points": 100}, headers=headers)
    body = {"id": "spend-1", "points": 30}
    answers = await asyncio.gather(
        *(client.post(REDEEM.format("c1"), json=body, headers=headers) for _ in range(10))
    )
    assert [r.status_code for r in answers] == [201] * 10
    assert await balance(client, headers, "c1") == 70


async def test_one_body_id_with_different_contents_at_once_writes_one_of_them(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answers = await asyncio.gather(
        *(
            client.post(
                ADD.format(f"c{n % 3}"), json={"id": "contested", "points": 10 + n}, headers=headers
            )
            for n in range(10)
        )
    )
    # An id names one entry per customer: one winner on each of the three.
    assert sorted(r.status_code for r in answers) == [201] * 3 + [409] * 7
    for customer in range(3):
        winners = [n for n, r in enumerate(answers) if r.status_code == 201 and n % 3 == customer]
        assert len(winners) == 1
        assert await balance(client, headers, f"c{customer}") == 10 + winners[0]


async def test_a_retried_storefront_redeem_spends_once_and_answers_the_same_code(
    client: httpx.AsyncClient, headers: dict[str, str], make_headers: Any, tenant: str
) -> None:
    from .test_redeem_options import OPTION, options_url

    created = await client.post(options_url(tenant), json=OPTION, headers=headers)
    option_id = created.json()[-1]["id"]
    await client.post(ADD.format("c1"), json={"points": 200}, headers=headers)
    shopper = make_headers(tenant, "customer.customerprofile_view", customer_id="c1")
    answers = [
        await client.post(
            "/reward-points/public/customer/redeem",
            json={"id": option_id},
            headers=keyed(shopper, "checkout-1"),
        )
        for _ in range(3)
    ]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert len({r.json()["code"] for r in answers}) == 1
    assert await balance(client, headers, "c1") == 200 - cast(int, OPTION["points"])
    coupons = await client.get("/reward-points/public/customer/coupons", headers=shopper)
    assert len(coupons.json()) == 1


async def test_retried_order_awards_and_option_creations_replay(
    client: httpx.AsyncClient, headers: dict[str, str], tenant: str
) -> None:
    from .test_redeem_options import OPTION, options_url

    order = {"orderId": "B1", "total": {"amount": 12.5, "currency": "EUR"}, "status": "COMPLETED"}
    awards = [
        await client.post(
            "/reward-points/customer/c1/orders", json=order, headers=keyed(headers, "o")
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in awards] == [201, 201]
    assert awards[1].json() == awards[0].json()
    assert awards[1].headers["idempotent-replayed"] == "true"
    creations = [
        await client.post(options_url(tenant), json=OPTION, headers=keyed(headers, "opt"))
        for _ in range(2)
    ]
    assert creations[1].json() == creations[0].json()
    listed = await client.get(options_url(tenant), headers=headers)
    assert len(listed.json()) == 1
