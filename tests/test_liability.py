"""The liability report on a generated tenant: every figure is what the customers' histories,
balances and summaries add up to."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .conftest import served
from .support import FakeClock
from .test_history import get, whole_history

Headers = dict[str, str]
BASE = "/reward-points"
FIGURE = {
    "added": "issued",
    "chargeback": "issued",
    "redeemed": "redeemed",
    "reversed": "reversed",
    "deducted": "deducted",
    "expired": "expired",
}


async def generate(client: httpx.AsyncClient, headers: Headers, clock: FakeClock) -> list[str]:
    """Eight customers, four months of adds (some expiring soon), redemptions, deductions
    (beyond the balance now and then) and reversals, on a seeded random walk."""
    rng = random.Random(21)
    customers = [f"c{n}" for n in range(8)]
    redemptions: dict[str, list[str]] = {c: [] for c in customers}
    for step in range(160):
        clock.advance(hours=rng.randint(1, 18))
        customer = rng.choice(customers)
        what = rng.random()
        path = f"{BASE}/customer/{customer}"
        if what < 0.45:
            body: dict[str, Any] = {"points": rng.randint(1, 50)}
            if rng.random() < 0.5:
                valid = clock.now + timedelta(days=rng.randint(2, 60))
                body["validUntil"] = valid.isoformat()
            response = await client.post(f"{path}/addPoints", json=body, headers=headers)
            assert response.status_code == 201, response.text
        elif what < 0.7:
            entry = f"r{step}"
            body = {"points": rng.randint(1, 30), "id": entry}
            response = await client.post(f"{path}/redeemPoints", json=body, headers=headers)
            assert response.status_code in (201, 400, 404), response.text
            if response.status_code == 201:
                redemptions[customer].append(entry)
        elif what < 0.85:
            body = {"points": rng.randint(1, 20)}
            response = await client.post(f"{path}/deductPoints", json=body, headers=headers)
            assert response.status_code in (201, 404), response.text
        elif redemptions[customer]:
            body = {"redemptionId": rng.choice(redemptions[customer])}
            if rng.random() < 0.5:
                body["points"] = 1
            response = await client.post(f"{path}/reversePoints", json=body, headers=headers)
            assert response.status_code in (201, 400), response.text
    # One customer ends in debt.
    response = await client.post(
        f"{BASE}/customer/c0/deductPoints", json={"points": 1000}, headers=headers
    )
    assert response.status_code == 201, response.text
    return customers


async def test_the_liability_report_is_what_the_histories_add_up_to(
    database_url: str, headers: Headers
) -> None:
    clock = FakeClock(datetime(2031, 1, 3, tzinfo=UTC), step=timedelta(0))
    async with served(database_url, clock, negative_balance="allow") as client:
        customers = await generate(client, headers, clock)
        report = await get(client, headers, "/liability", months=6)

        flows: dict[str, Counter[str]] = {}
        balances: list[int] = []
        expiring: Counter[str] = Counter()
        for customer in customers:
            response = await client.get(f"{BASE}/customer/{customer}", headers=headers)
            if response.status_code == 404:
                continue
            balances.append(response.json())
            for item in await whole_history(client, headers, customer, limit=7):
                month = item["createdAt"][:7]
                flows.setdefault(month, Counter())[FIGURE[item["kind"]]] += item["points"]
            summary = await get(client, headers, f"/customer/{customer}/summary")
            for lot in summary["summary"]["addedPointsList"]:
                left = lot["points"] - lot["usedPoints"]
                if datetime.fromisoformat(lot["validUntil"]) > clock.now and left:
                    expiring[lot["validUntil"][:7]] += left

    assert report["at"].startswith("2031-0")
    assert report["outstandingPoints"] == sum(b for b in balances if b > 0)
    assert report["customers"] == sum(1 for b in balances if b > 0)
    assert report["debtPoints"] == -sum(b for b in balances if b < 0)
    assert report["customersInDebt"] == sum(1 for b in balances if b < 0)
    assert report["debtPoints"] > 0 and report["outstandingPoints"] > 0
    months = [m["month"] for m in report["months"]]
    assert len(months) == 6 and months == sorted(months)
    assert months[-1] == report["at"][:7]
    assert set(flows) <= set(months)  # every entry falls in the report's window
    for month in report["months"]:
        figures = {k: v for k, v in month.items() if k != "month"}
        assert figures == {k: flows.get(month["month"], Counter())[k] for k in figures}, month
    assert sum(m["expired"] for m in report["months"]) > 0
    assert sum(m["reversed"] for m in report["months"]) > 0
    assert [e["month"] for e in report["expiring"]][0] == report["at"][:7]
    assert len(report["expiring"]) == 6
    assert {e["month"]: e["points"] for e in report["expiring"] if e["points"]} == {
        month: points
        for month, points in expiring.items()
        if month <= report["expiring"][-1]["month"]
    }
