from __future__ import annotations

import httpx


async def test_add_then_balance(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 10}, headers=headers
    )
    assert response.status_code == 201
    assert response.content == b""
    balance = await client.get("/reward-points/customer/c1", headers=headers)
    assert balance.json() == 10
