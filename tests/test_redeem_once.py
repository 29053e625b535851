"""A storefront redemption spends its points once per Idempotency-Key, across processes, and
always ends as exactly one of a coupon the customer can see or a chargeback lot: with the same
key sent to two servers at once, a retry while a slow coupon service works, a server killed
between the spending and the coupon, the database failing before the chargeback, two runs
of one intent at once; and a redemption left to the outbox while its customer is deleted and
given an entry again, its site leaves the configuration, or its key outlives its time to
live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from rewardpoints.app import create_app
from rewardpoints.coupons import BuiltInCoupons
from rewardpoints.idempotency import KeyClaim, fingerprint

from .conftest import MANAGE, TEST_SECRET, VIEW, bearer, make_settings, token
from .coupon_service import FakeCouponService
from .support import FakeClock, connect, server_process
from .test_coupons import CHARGEBACK
from .test_redeem_options import option, options_url

PUBLIC = "/reward-points/public/customer"
Headers = dict[str, str]


def _env(
    pg_url: str, coupons: FakeCouponService, *, timeout: float, lease: float
) -> dict[str, str]:
    return {
        "REWARDPOINTS_DATABASE_URL": pg_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_COUPON_SERVICE_URL": coupons.url,
        "REWARDPOINTS_COUPON_SERVICE_TIMEOUT_SECONDS": str(timeout),
        "REWARDPOINTS_COUPON_SERVICE_ATTEMPTS": "1",
        "REWARDPOINTS_OUTBOX_LEASE_SECONDS": str(lease),
        "REWARDPOINTS_OUTBOX_POLL_SECONDS": "0.2",
    }


def _admin(tenant: str) -> Headers:
    return bearer(token(tenant, (VIEW, MANAGE)))


def _customer(tenant: str, customer_id: str) -> Headers:
    return bearer(token(tenant, ("customer.customerprofile_view",), customer_id=customer_id))


async def _option(client: httpx.AsyncClient, base: str, tenant: str) -> str:
    created = await client.post(
        base + options_url(tenant), json=option(points=10), headers=_admin(tenant)
    )
    assert created.status_code == 200, created.text
    option_id: str = created.json()[-1]["id"]
    return option_id


async def _give(client: httpx.AsyncClient, base: str, tenant: str, customer_id: str) -> None:
    added = await client.post(
        f"{base}/reward-points/customer/{customer_id}/addPoints",
        json={"points": 100},
        headers=_admin(tenant),
    )
    assert added.status_code == 201, added.text


async def _redeem(
    client: httpx.AsyncClient, base: str, tenant: str, customer_id: str, option_id: str, key: str
) -> httpx.Response:
    return await client.post(
        f"{base}{PUBLIC}/redeem",
        json={"id": option_id},
        headers={**_customer(tenant, customer_id), "Idempotency-Key": key},
    )


async def _answered(
    client: httpx.AsyncClient,
    base: str,
    tenant: str,
    customer_id: str,
    option_id: str,
    key: str,
    within: float = 30.0,
) -> httpx.Response:
    """The key's answer, asked again while it is in progress (409) or unavailable (503)."""
    deadline = time.monotonic() + within
    while True:
        response = await _redeem(client, base, tenant, customer_id, option_id, key)
        if response.status_code not in (409, 503):
            return response
        assert time.monotonic() < deadline, f"still {response.status_code}: {response.text}"
        await asyncio.sleep(0.2)


async def _summary(
    client: httpx.AsyncClient, base: str, tenant: str, customer_id: str
) -> dict[str, Any]:
    response = await client.get(
        f"{base}/reward-points/customer/{customer_id}/summary", headers=_admin(tenant)
    )
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()
    return summary


def _issued_to(coupons: FakeCouponService, tenant: str, customer_id: str) -> list[str]:
    return sorted(
        code
        for (owner, code), coupon in coupons.coupons.items()
        if owner == tenant and coupon["issuedTo"] == customer_id
    )


async def _assert_spent_once_for(
    client: httpx.AsyncClient,
    base: str,
    coupons: FakeCouponService,
    tenant: str,
    customer_id: str,
    code: str,
) -> None:
    summary = await _summary(client, base, tenant, customer_id)
    assert summary["activePoints"] == 90
    assert [r["points"] for r in summary["summary"]["redeemedPointsList"]] == [10]
    assert [lot["points"] for lot in summary["summary"]["addedPointsList"]] == [100]
    assert _issued_to(coupons, tenant, customer_id) == [code]


@pytest.mark.slow
async def test_one_key_sent_to_two_servers_at_once_spends_the_points_once(
    pg_url: str, coupon_service: FakeCouponService
) -> None:
    """Each pair of requests lands on two processes; one spends, the other is told the
    request is in progress (or, when it comes after, gets the replay)."""
    tenant = "tonce" + str(int(time.time() * 1000) % 100000)
    rounds = 12
    coupon_service.delay = 0.2
    coupon_service.plans[tenant] = ["slow"] * rounds
    env = _env(pg_url, coupon_service, timeout=2.0, lease=12.0)
    with server_process(env) as a, server_process(env) as b:
        async with httpx.AsyncClient(timeout=30) as client:
            option_id = await _option(client, a.base, tenant)
            for n in range(rounds):
                customer_id, key = f"c{n}", f"key-{n}"
                await _give(client, a.base, tenant, customer_id)
                answers = await asyncio.gather(
                    _redeem(client, a.base, tenant, customer_id, option_id, key),
                    _redeem(client, b.base, tenant, customer_id, option_id, key),
                )
                assert sorted(r.status_code for r in answers) in ([200, 200], [200, 409]), [
                    r.text for r in answers
                ]
                final = await _answered(client, b.base, tenant, customer_id, option_id, key)
                assert final.status_code == 200, final.text
                assert final.headers.get("Idempotent-Replayed") == "true"
                code = final.json()["code"]
                assert {r.json()["code"] for r in answers if r.status_code == 200} == {code}
                await _assert_spent_once_for(
                    client, a.base, coupon_service, tenant, customer_id, code
                )


@pytest.mark.slow
async def test_a_retry_while_a_slow_coupon_service_works_is_in_progress_then_replayed(
    pg_url: str, coupon_service: FakeCouponService
) -> None:
    """The coupon service takes 1.5 s; the client retries on another server after 0.5 s."""
    tenant = "tslow" + str(int(time.time() * 1000) % 100000)
    coupon_service.delay = 1.5
    coupon_service.plans[tenant] = ["slow"] * 3
    env = _env(pg_url, coupon_service, timeout=3.0, lease=16.0)
    with server_process(env) as a, server_process(env) as b:
        async with httpx.AsyncClient(timeout=30) as client:
            option_id = await _option(client, a.base, tenant)
            await _give(client, a.base, tenant, "c1")
            first = asyncio.ensure_future(_redeem(client, a.base, tenant, "c1", option_id, "k"))
            await asyncio.sleep(0.5)
            retry = await _redeem(client, b.base, tenant, "c1", option_id, "k")
            assert retry.status_code == 409, retry.text
            assert retry.json()["details"][0]["field"] == "Idempotency-Key"
            answered = await first
            assert answered.status_code == 200, answered.text
            code = answered.json()["code"]
            replayed = await _redeem(client, b.base, tenant, "c1", option_id, "k")
            assert replayed.status_code == 200
            assert replayed.headers.get("Idempotent-Replayed") == "true"
            assert replayed.json() == {"code": code}
            await _assert_spent_once_for(client, a.base, coupon_service, tenant, "c1", code)


@pytest.mark.slow
@pytest.mark.parametrize("after_restart", ["ok", "400"])
async def test_a_server_killed_between_the_spending_and_the_coupon_loses_nothing(
    pg_url: str, coupon_service: FakeCouponService, after_restart: str
) -> None:
    """The server is killed while the coupon service holds its request; a new server settles
    the redemption once the intent's lease has run out: the coupon under the same code, or,
    when the coupon service refuses it, the chargeback. The retry gets that answer."""
    tenant = "tkill" + after_restart + str(int(time.time() * 1000) % 100000)
    coupon_service.held.clear()
    coupon_service.plans[tenant] = ["hold", after_restart]
    env = _env(pg_url, coupon_service, timeout=2.0, lease=10.0)
    async with httpx.AsyncClient(timeout=30) as client:
        with server_process(env) as a:
            option_id = await _option(client, a.base, tenant)
            await _give(client, a.base, tenant, "c1")
            pending = asyncio.ensure_future(_redeem(client, a.base, tenant, "c1", option_id, "k"))
            held = await asyncio.to_thread(coupon_service.held.wait, 10)
            assert held, "the coupon service never got the coupon"
            a.kill()
            with contextlib.suppress(httpx.HTTPError):
                await pending
        [first_try] = coupon_service.posts(tenant)[-1:]
        with server_process(env) as b:
            answer = await _answered(client, b.base, tenant, "c1", option_id, "k")
            again = await _redeem(client, b.base, tenant, "c1", option_id, "k")
            assert again.json() == answer.json()
            summary = await _summary(client, b.base, tenant, "c1")
    assert [r["points"] for r in summary["summary"]["redeemedPointsList"]] == [10]
    added = summary["summary"]["addedPointsList"]
    if after_restart == "ok":
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"code": first_try.body["code"].upper()}
        assert summary["activePoints"] == 90
        assert [lot["points"] for lot in added] == [100]
        assert _issued_to(coupon_service, tenant, "c1") == [first_try.body["code"].upper()]
    else:
        assert answer.status_code == 502, answer.text
        assert summary["activePoints"] == 100
        assert [(lot["points"], lot["description"]) for lot in added] == [
            (100, "points added"),
            (10, CHARGEBACK),
        ]
        assert _issued_to(coupon_service, tenant, "c1") == []


@pytest.mark.slow
async def test_the_database_failing_before_the_chargeback_loses_nothing(
    pg_url: str, coupon_service: FakeCouponService
) -> None:
    """The coupon service refuses the coupon, and just before its answer the database stops
    taking connections: the request answers 503 with Retry-After, the points stay spent; once
    the database is back the chargeback is made, once, and the key's retry gets the 502."""
    tenant = "tblip" + str(int(time.time() * 1000) % 100000)
    database = make_url(pg_url).database
    admin_url = str(make_url(pg_url).set(database="postgres"))

    async def set_connections(allow: bool) -> None:
        conn = await connect(admin_url)
        try:
            await conn.execute(
                f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allow else "false"}'
            )
            if not allow:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND application_name = 'rewardpoints'",
                    database,
                )
        finally:
            await conn.close()

    coupon_service.on_blip = lambda: asyncio.run(set_connections(False))
    coupon_service.plans[tenant] = ["blip-400", "400"]  # refused again when run again
    env = _env(pg_url, coupon_service, timeout=2.0, lease=10.0)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            with server_process(env) as a:
                option_id = await _option(client, a.base, tenant)
                await _give(client, a.base, tenant, "c1")
                failed = await _redeem(client, a.base, tenant, "c1", option_id, "k")
                assert failed.status_code == 503, f"{failed.text}\n{a.output()}"
                assert failed.headers.get("Retry-After")
                await set_connections(True)
                answer = await _answered(client, a.base, tenant, "c1", option_id, "k")
                assert answer.status_code == 502, answer.text
                summary = await _summary(client, a.base, tenant, "c1")
    finally:
        await set_connections(True)
        coupon_service.on_blip = lambda: None
    assert summary["activePoints"] == 100
    assert [r["points"] for r in summary["summary"]["redeemedPointsList"]] == [10]
    assert [
        (lot["points"], lot["description"]) for lot in summary["summary"]["addedPointsList"]
    ] == [
        (100, "points added"),
        (10, CHARGEBACK),
    ]


async def test_two_runs_of_one_intent_at_once_settle_it_once(
    database_url: str, clock: FakeClock, tenant: str
) -> None:
    """The request's own run and the outbox runner's, at the same moment, with a coupon that
    cannot be issued: one chargeback, and both runs answer the same outcome."""
    settings = make_settings(database_url)
    first, second = create_app(settings, clock=clock), create_app(settings, clock=clock)
    try:
        for app in (first, second):
            app.state.rewards.issuer = BuiltInCoupons(attempts=0)  # no code ever free
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            option_id = await _option(client, "", tenant)
            await _give(client, "", tenant, "c1")
        rewards = first.state.rewards
        intents = [
            await rewards.spend(tenant, "c1", option_id, "main", key=None, path="/p")
            for _ in range(3)
        ]
        outcomes = await asyncio.gather(
            *(app.state.rewards.settle(intent) for intent in intents for app in (first, second))
        )
        for n in range(3):
            assert outcomes[2 * n] == outcomes[2 * n + 1]
            assert outcomes[2 * n].charged_back
        clock.now += timedelta(hours=1)  # every lease has run out: nothing is left to run
        assert await first.state.outbox.run_due() == 0
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            summary = await _summary(client, "", tenant, "c1")
    finally:
        for app in (first, second):
            await app.state.ledger.engine.dispose()
    assert summary["activePoints"] == 100
    descriptions = [lot["description"] for lot in summary["summary"]["addedPointsList"]]
    assert descriptions == ["points added"] + [CHARGEBACK] * 3


async def test_an_intent_whose_run_was_lost_is_settled_by_one_runner_after_its_lease(
    database_url: str, clock: FakeClock, tenant: str
) -> None:
    """Intents spent but never settled (the process died): not run while leased; after the
    lease two processes' runners race for them and each is settled once."""
    settings = make_settings(database_url)
    first, second = create_app(settings, clock=clock), create_app(settings, clock=clock)
    try:
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            option_id = await _option(client, "", tenant)
            await _give(client, "", tenant, "c1")
        for _ in range(5):
            await first.state.rewards.spend(tenant, "c1", option_id, "main", key=None, path="/p")
        assert await first.state.outbox.run_due() == 0  # leased to the process that spent
        clock.now += timedelta(seconds=settings.outbox_lease_seconds + 1)
        claimed = await asyncio.gather(first.state.outbox.run_due(), second.state.outbox.run_due())
        assert sum(claimed) == 5
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            coupons = await client.get(f"{PUBLIC}/coupons", headers=_customer(tenant, "c1"))
            summary = await _summary(client, "", tenant, "c1")
    finally:
        for app in (first, second):
            await app.state.ledger.engine.dispose()
    assert coupons.status_code == 200
    assert len(coupons.json()) == 5
    assert summary["activePoints"] == 50
    assert len(summary["summary"]["addedPointsList"]) == 1  # no chargeback


def _redeem_body(option_id: str) -> bytes:
    return json.dumps({"id": option_id}).encode()


def _claim(tenant: str, customer_id: str, option_id: str, key: str) -> KeyClaim:
    """The claim a redeem request with this body and key makes (api/idempotency.claim_of)."""
    path = f"{PUBLIC}/redeem"
    return KeyClaim(
        tenant, key, fingerprint("POST", path, "", customer_id, _redeem_body(option_id))
    )


async def _retry(
    client: httpx.AsyncClient, tenant: str, customer_id: str, option_id: str, key: str
) -> httpx.Response:
    headers = {
        **_customer(tenant, customer_id),
        "Idempotency-Key": key,
        "Content-Type": "application/json",
    }
    return await client.post(f"{PUBLIC}/redeem", content=_redeem_body(option_id), headers=headers)


async def test_a_customer_deleted_and_created_again_before_the_settling_gets_nothing_of_it(
    database_url: str, clock: FakeClock, tenant: str
) -> None:
    """The points are spent and the process dies; before the outbox settles the redemption,
    the customer is deleted (the redemption with it) and gets an entry again. The redemption is
    settled as one that came after the delete: no coupon, no chargeback for the new entry, and
    the key's answer is the 404."""
    settings = make_settings(database_url)
    app = create_app(settings, clock=clock)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            option_id = await _option(client, "", tenant)
            await _give(client, "", tenant, "c1")
            await app.state.rewards.spend(
                tenant, "c1", option_id, "main", key=_claim(tenant, "c1", option_id, "k"), path="/p"
            )
            deleted = await client.delete("/reward-points/customer/c1", headers=_admin(tenant))
            assert deleted.status_code == 200, deleted.text
            await _give(client, "", tenant, "c1")

            clock.advance(seconds=settings.outbox_lease_seconds + 1)
            assert await app.state.outbox.run_due() == 1

            answer = await _retry(client, tenant, "c1", option_id, "k")
            assert answer.status_code == 404, answer.text
            assert answer.headers["Idempotent-Replayed"] == "true"
            summary = await _summary(client, "", tenant, "c1")
            coupons = await client.get(f"{PUBLIC}/coupons", headers=_customer(tenant, "c1"))
    finally:
        await app.state.ledger.engine.dispose()
    assert coupons.json() == []
    assert summary["activePoints"] == 100
    assert summary["summary"]["redeemedPointsList"] == []
    assert [lot["description"] for lot in summary["summary"]["addedPointsList"]] == ["points added"]


async def test_a_redemption_on_a_site_since_removed_from_the_configuration_is_settled(
    database_url: str, clock: FakeClock, tenant: str, tmp_path: Path
) -> None:
    """The points are spent on site "de" and the process dies; the service comes back with a
    configuration without "de". The outbox still settles the redemption, with the coupon under
    the code drawn for it."""
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps({"main": {}, "de": {"codePrefix": "DE"}}))
    after.write_text(json.dumps({"main": {}}))
    settings = make_settings(database_url, sites_file=before)
    first = create_app(settings, clock=clock)
    second = create_app(make_settings(database_url, sites_file=after), clock=clock)
    try:
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            option_id = await _option(client, "", tenant)
            await _give(client, "", tenant, "c1")
            intent = await first.state.rewards.spend(
                tenant, "c1", option_id, "de", key=None, path="/p"
            )
            clock.advance(seconds=settings.outbox_lease_seconds + 1)
            assert await second.state.outbox.run_due() == 1
            coupons = await client.get(f"{PUBLIC}/coupons", headers=_customer(tenant, "c1"))
            summary = await _summary(client, "", tenant, "c1")
    finally:
        for app in (first, second):
            await app.state.ledger.engine.dispose()
    assert [coupon["code"] for coupon in coupons.json()] == [intent.payload["code"]]
    assert intent.payload["code"].startswith("DE-")
    assert summary["activePoints"] == 90


async def test_a_key_whose_redemption_waits_for_the_outbox_longer_than_its_ttl_stays_claimed(
    database_url: str, clock: FakeClock, tenant: str
) -> None:
    """The points are spent and the process dies; the key's time to live ends, and expired keys
    are pruned, before the outbox settles the redemption. A retry with the key is still told
    it is in progress (it does not spend again), and gets the redemption's answer once settled."""
    settings = make_settings(database_url, idempotency_ttl_hours=0.001)  # 3.6 s
    app = create_app(settings, clock=clock)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            option_id = await _option(client, "", tenant)
            await _give(client, "", tenant, "c1")
            intent = await app.state.rewards.spend(
                tenant, "c1", option_id, "main", key=_claim(tenant, "c1", option_id, "k"), path="/p"
            )
            clock.advance(seconds=10)
            await app.state.idempotency.prune()
            retried = await _retry(client, tenant, "c1", option_id, "k")
            assert retried.status_code == 409, retried.text

            clock.advance(seconds=settings.outbox_lease_seconds)
            assert await app.state.outbox.run_due() == 1
            answer = await _retry(client, tenant, "c1", option_id, "k")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"code": intent.payload["code"]}
            summary = await _summary(client, "", tenant, "c1")
            coupons = await client.get(f"{PUBLIC}/coupons", headers=_customer(tenant, "c1"))
    finally:
        await app.state.ledger.engine.dispose()
    assert [coupon["code"] for coupon in coupons.json()] == [intent.payload["code"]]
    assert summary["activePoints"] == 90
