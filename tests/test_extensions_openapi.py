"""The operations beyond Emporix's API in the OpenAPI document: each with its schemas and
errors, under a Swagger tag of its own; and Emporix's own operations keep theirs."""

from __future__ import annotations

from typing import Any

import httpx

EMPORIX_TAG = "Reward Points Management"
OPERATIONS = {
    ("post", "/reward-points/customer/{customerId}/reversePoints"): ("Reversals", "ReversalOut"),
    ("post", "/reward-points/customer/{customerId}/deductPoints"): ("Deductions", "DeductionOut"),
    ("get", "/reward-points/customer/{customerId}/history"): ("History", "HistoryOut"),
    ("get", "/reward-points/customer/{customerId}/balance"): ("Balance in time", "BalanceAtOut"),
    ("get", "/reward-points/customer/{customerId}/expiringPoints"): (
        "Expiring points",
        "ExpiringPointsOut",
    ),
    ("get", "/reward-points/expiringPoints"): ("Expiring points", "ExpiringCustomerOut"),
    ("get", "/reward-points/liability"): ("Liability", "LiabilityOut"),
}
DRY_RUNS = [
    "/reward-points/customer/{customerId}/addPoints",
    "/reward-points/customer/{customerId}/redeemPoints",
    "/reward-points/customer/{customerId}/reversePoints",
    "/reward-points/customer/{customerId}/deductPoints",
]


def success_schema(operation: dict[str, Any]) -> str:
    status = next(s for s in operation["responses"] if s in ("200", "201"))
    if status == "200" and "201" in operation["responses"]:
        status = "201"
    return str(operation["responses"][status]["content"]["application/json"]["schema"])


async def test_each_new_operation_is_documented_under_a_tag_of_its_own(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for (method, path), (tag, schema) in OPERATIONS.items():
        operation = document["paths"][path][method]
        assert operation["tags"] == [tag], path
        assert schema in success_schema(operation), path
        assert schema in schemas
        errors = set(operation["responses"])
        assert {"400", "401", "403", "500", "503"} <= errors, path
        if "{customerId}" in path:
            assert "404" in errors, path
        assert operation["description"], path
    for path in DRY_RUNS:
        operation = document["paths"][path]["post"]
        names = [parameter["name"] for parameter in operation["parameters"]]
        assert "dryRun" in names, path
        assert "PreviewOut" in str(operation["responses"]["200"]), path
    # Emporix's operations keep Emporix's tag.
    for path in DRY_RUNS[:2]:
        assert document["paths"][path]["post"]["tags"] == [EMPORIX_TAG]
    for name in ("HistoryItemOut", "LiabilityMonthOut", "PreviewOut", "ReversalIn", "DeductionIn"):
        assert name in schemas, name
    assert "reason" in schemas["AddedPointsIn"]["properties"]
