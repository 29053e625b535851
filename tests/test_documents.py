"""Summaries are the same bytes whichever database writes them (PostgreSQL builds them in SQL)."""

from __future__ import annotations

import httpx

from rewardpoints.documents import dumps

AWKWARD = 'quote " backslash \\ slash / newline \n tab \t nul-less \x01 ä € 😀 \u2028 end'


async def test_summary_bytes_are_compact_json_with_every_character_escaped_alike(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    customer = "cust\u00e4\"'"
    url = "/reward-points/customer/cust%C3%A4%22'"
    await client.post(
        f"{url}/addPoints",
        json={"points": 9, "description": AWKWARD, "reference-id": AWKWARD, "id": 'i\\d"1'},
        headers=headers,
    )
    await client.post(
        f"{url}/redeemPoints", json={"points": 4, "description": AWKWARD}, headers=headers
    )
    single = await client.get(f"{url}/summary", headers=headers)
    batch = await client.get("/reward-points/summaryBatch", headers=headers)
    assert single.status_code == 200, single.text
    parsed = single.json()
    assert parsed["customerId"] == customer
    assert parsed["summary"]["addedPointsList"][0]["description"] == AWKWARD
    assert parsed["summary"]["addedPointsList"][0]["reference-id"] == AWKWARD
    assert parsed["summary"]["redeemedPointsList"][0]["description"] == AWKWARD
    assert single.content == dumps(parsed)
    assert batch.content == dumps([parsed])
