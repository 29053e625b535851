"""Reversals and deductions racing redemptions of one customer, across the two worker
processes of a real ``rewardpoints serve``: no lot's usedPoints ever goes below zero or above
its points, and no point is lost or made."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from .conftest import TEST_SECRET, bearer, token
from .support import running_server
from .test_history import SIGN

pytestmark = pytest.mark.slow

BASE = "/reward-points"


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("server")
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    with contextlib.ExitStack() as stack:
        with contextlib.chdir(workdir):
            base = stack.enter_context(running_server(env, workers=2))
        yield base


@pytest.fixture
async def http(server: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server, limits=limits, timeout=30.0) as client:
        yield client


async def test_reversals_and_deductions_racing_redemptions_lose_no_point(
    http: httpx.AsyncClient, tenant: str
) -> None:
    headers = bearer(token(tenant))
    path = f"{BASE}/customer/c1"
    for n in range(20):
        response = await http.post(
            f"{path}/addPoints", json={"id": f"l{n}", "points": 10}, headers=headers
        )
        assert response.status_code == 201, response.text
    for n in range(10):
        response = await http.post(
            f"{path}/redeemPoints", json={"id": f"r{n}", "points": 5}, headers=headers
        )
        assert response.status_code == 201, response.text

    async def send(action: str, body: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
        response = await http.post(f"{path}/{action}", json=body, headers=headers)
        return action, body, response.status_code

    requests = [("redeemPoints", {"id": f"s{n}", "points": 4}) for n in range(24)]
    requests += [("deductPoints", {"id": f"d{n}", "points": 3}) for n in range(12)]
    # Three reversals of 2 points for each early redemption of 5: the third must be refused.
    requests += [
        ("reversePoints", {"id": f"v{n}-{k}", "redemptionId": f"r{n}", "points": 2})
        for n in range(10)
        for k in range(3)
    ]
    # Interleave the kinds, so each worker has some of each at once.
    order = sorted(range(len(requests)), key=lambda i: (i * 7919) % len(requests))
    results = await asyncio.gather(*(send(*requests[i]) for i in order))

    done: dict[str, int] = {"redeemPoints": 0, "deductPoints": 0, "reversePoints": 0}
    for action, body, status in results:
        assert status in (201, 400), (action, body, status)
        if status == 201:
            done[action] += 1
    assert done["reversePoints"] == 20  # two of each three, whichever came first
    assert done["redeemPoints"] + done["deductPoints"] > 0

    summary = (await http.get(f"{path}/summary", headers=headers)).json()
    lots = summary["summary"]["addedPointsList"]
    assert all(0 <= lot["usedPoints"] <= lot["points"] for lot in lots)
    redeemed = summary["summary"]["redeemedPointsList"]
    assert sum(lot["usedPoints"] for lot in lots) == sum(entry["points"] for entry in redeemed)
    expected = 200 - 10 * 5 - 4 * done["redeemPoints"] - 3 * done["deductPoints"] + 2 * 20
    balance = (await http.get(path, headers=headers)).json()
    assert balance == summary["activePoints"] == expected
    assert balance == sum(lot["points"] - lot["usedPoints"] for lot in lots)

    history: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = (await http.get(f"{path}/history", params=params, headers=headers)).json()
        history += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert len(history) == 20 + 10 + sum(done.values())
    assert history[0]["balanceAfter"] == balance
    for newer, older in zip(history, history[1:], strict=False):
        assert (
            newer["balanceAfter"] == older["balanceAfter"] + SIGN[newer["kind"]] * newer["points"]
        )
