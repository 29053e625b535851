"""Verified tokens are remembered, but never past their expiry."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import bearer, token


async def test_a_remembered_token_still_expires(
    client: httpx.AsyncClient, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = bearer(token(tenant, ttl_seconds=60))
    await client.post("/reward-points/customer/c1/addPoints", json={"points": 3}, headers=headers)
    assert (await client.get("/reward-points/customer/c1", headers=headers)).json() == 3
    later = time.time() + 3600
    monkeypatch.setattr("rewardpoints.auth.time.time", lambda: later)
    expired = await client.get("/reward-points/customer/c1", headers=headers)
    assert expired.status_code == 401
