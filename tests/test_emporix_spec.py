"""The service's OpenAPI document against Emporix's own spec, mechanically: for every Emporix
operation the path, the operation id, the parameters (name, location, required, type), the
request body's fields and required set, the response codes Emporix documents and the security
requirement, and every operation the service adds. Each deliberate difference is listed below
with its reason; any other difference fails, and so does a listed one that is gone.

Also what a code generator reads from the document: JSON Schema keywords only, the enum of
discountType, date-time formats, and an example with its own status on every problem answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis

from .test_fuzz import DOCUMENT, EMPORIX_SPEC

Difference = tuple[str, str, str, str]  # (kind, METHOD, path, what)
METHODS = ("get", "put", "post", "delete", "patch")
SCOPED_SCHEMES = ("OAuth2", "CustomerAccessToken")
BALANCE = "/reward-points/customer/{customerId}"
ADD = "/reward-points/customer/{customerId}/addPoints"
REDEEM_POINTS = "/reward-points/customer/{customerId}/redeemPoints"
OPTIONS = "/reward-points/{tenant}/redeemOptions"
OPTION = "/reward-points/{tenant}/redeemOptions/{redeemOptionId}"
REDEEM = "/reward-points/public/customer/redeem"
IDEMPOTENCY = "docs/api.md: Idempotency-Key makes a POST safe to retry"
CONTRACT_400 = "CONTRACT.md section 4: every invalid parameter or body is a 400"

# Every deliberate difference from Emporix's spec, with its reason.
EXTENSIONS: dict[Difference, str] = {
    # Operations Emporix's spec does not have.
    ("operation", "GET", "/reward-points/public/customer/redeemOptions", ""): (
        "the path Emporix's own storefront calls, missing from Emporix's spec"
    ),
    ("operation", "GET", "/reward-points/public/customer/coupons", ""): (
        "the coupons the built-in issuer gave the customer (docs/api.md)"
    ),
    ("operation", "POST", "/reward-points/customer/{customerId}/orders", ""): (
        "points for a completed order, once per order (docs/api.md)"
    ),
    **{
        ("operation", method, f"/reward-points{path}", ""): (
            "beyond Emporix: reversals, deductions, history, balances in time, expiry and"
            " liability (docs/api.md)"
        )
        for method, path in (
            ("POST", "/customer/{customerId}/reversePoints"),
            ("POST", "/customer/{customerId}/deductPoints"),
            ("GET", "/customer/{customerId}/history"),
            ("GET", "/customer/{customerId}/balance"),
            ("GET", "/customer/{customerId}/expiringPoints"),
            ("GET", "/expiringPoints"),
            ("GET", "/liability"),
        )
    },
    **{
        (kind, "POST", f"/reward-points/customer/{{customerId}}/{operation}", detail): reason
        for operation in ("addPoints", "redeemPoints")
        for kind, detail, reason in (
            ("parameter", "query dryRun", "beyond Emporix: a dry run answers 200 (docs/api.md)"),
            ("success codes", "200,201", "beyond Emporix: 200 is a dry run's answer"),
            ("request field", "reason", "beyond Emporix: why, kept in the history"),
        )
    },
    ("operation", "GET", "/health/live", ""): "liveness for orchestrators (CONTRACT.md section 5)",
    ("operation", "GET", "/health/ready", ""): "readiness for orchestrators (CONTRACT.md §5)",
    # Parameters.
    ("parameter", "POST", BALANCE, "header Idempotency-Key"): IDEMPOTENCY,
    ("parameter", "POST", ADD, "header Idempotency-Key"): IDEMPOTENCY,
    ("parameter", "POST", REDEEM_POINTS, "header Idempotency-Key"): IDEMPOTENCY,
    ("parameter", "POST", OPTIONS, "header Idempotency-Key"): IDEMPOTENCY,
    ("parameter", "POST", REDEEM, "header Idempotency-Key"): IDEMPOTENCY,
    # Request bodies.
    ("request field", "POST", REDEEM, "redeemOptionId"): (
        "what a deployed storefront SDK sends in place of `id`; accepted as its alias"
    ),
    # Security requirements.
    ("security", "GET", OPTIONS, "CustomerAccessToken"): (
        "Emporix's description: accessible to all customers, so a customer's token reads too"
    ),
    ("security", "POST", OPTIONS, "no CustomerAccessToken"): (
        "Emporix's description: only employees configure redemption options"
    ),
    ("security", "PUT", OPTION, "no CustomerAccessToken"): (
        "Emporix's description: only employees update redemption options"
    ),
    ("security", "DELETE", OPTION, "no CustomerAccessToken"): (
        "Emporix's description: only employees delete redemption options"
    ),
    ("security", "DELETE", OPTION, "OAuth2 rewardspoints.rewardpoints_manage"): (
        "deleting is managing: the scope of Emporix's POST and PUT on the same resource"
    ),
}


def _resolve(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _parameters(document: dict[str, Any], path: str, method: str) -> dict[str, tuple[bool, Any]]:
    """``"in name"`` -> (required, type) of the operation's parameters, the path's included."""
    path_item = document["paths"][path]
    found: dict[str, tuple[bool, Any]] = {}
    for raw in [*path_item.get("parameters", []), *path_item[method].get("parameters", [])]:
        parameter = _resolve(document, raw)
        schema = _resolve(document, parameter.get("schema", {}))
        found[f"{parameter['in']} {parameter['name']}"] = (
            bool(parameter.get("required", False)),
            schema.get("type"),
        )
    return found


def _body(document: dict[str, Any], path: str, method: str) -> tuple[set[str], set[str]] | None:
    """The request body's fields and required set; None without a JSON body."""
    body = _resolve(document, document["paths"][path][method].get("requestBody"))
    if body is None:
        return None
    schema = _resolve(document, body["content"]["application/json"]["schema"])
    variants = [_resolve(document, s) for s in schema.get("anyOf", [schema])]
    objects = [s for s in variants if s.get("type") == "object" or "properties" in s]
    assert len(objects) == 1, schema
    return set(objects[0].get("properties", {})), set(objects[0].get("required", []))


def _security(document: dict[str, Any], path: str, method: str) -> set[str]:
    """The requirement's alternatives in Emporix's schemes, as ``"scheme scope"`` (or the
    scheme alone when it names no scope); the service's own plain bearer scheme aside."""
    requirements = document["paths"][path][method].get("security", document.get("security", []))
    alternatives: set[str] = set()
    for requirement in requirements:
        for scheme, scopes in requirement.items():
            if scheme not in SCOPED_SCHEMES:
                continue
            alternatives.update({f"{scheme} {scope}" for scope in scopes} or {scheme})
    return alternatives


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, path_item in document["paths"].items():
        for method in METHODS:
            if method in path_item:
                yield path, method


def differences(emporix: dict[str, Any], own: dict[str, Any]) -> set[Difference]:
    found: set[Difference] = set()
    for path, method in _operations(own):
        if method not in emporix["paths"].get(path, {}):
            found.add(("operation", method.upper(), path, ""))
    for path, method in _operations(emporix):
        where = (method.upper(), path)
        theirs_op = emporix["paths"][path][method]
        ours_op = own["paths"].get(path, {}).get(method)
        if ours_op is None:
            found.add(("missing operation", *where, ""))
            continue
        if ours_op.get("operationId") != theirs_op["operationId"]:
            found.add(("operation id", *where, str(ours_op.get("operationId"))))

        theirs, ours = _parameters(emporix, path, method), _parameters(own, path, method)
        for name in theirs.keys() | ours.keys():
            if name not in ours:
                found.add(("missing parameter", *where, name))
            elif name not in theirs:
                found.add(("parameter", *where, name))
            elif theirs[name] != ours[name]:
                found.add(("parameter differs", *where, f"{name}: {ours[name]}"))

        their_body, our_body = _body(emporix, path, method), _body(own, path, method)
        if (their_body is None) != (our_body is None):
            found.add(("request body", *where, "present" if our_body else "absent"))
        elif their_body is not None and our_body is not None:
            for field in their_body[0] - our_body[0]:
                found.add(("missing request field", *where, field))
            for field in our_body[0] - their_body[0]:
                found.add(("request field", *where, field))
            if their_body[1] != our_body[1]:
                found.add(("required", *where, ",".join(sorted(our_body[1]))))

        for status in set(theirs_op["responses"]) - set(ours_op["responses"]):
            found.add(("missing response", *where, status))
        their_success = {s for s in theirs_op["responses"] if s.startswith("2")}
        our_success = {s for s in ours_op["responses"] if s.startswith("2")}
        if their_success != our_success:
            found.add(("success codes", *where, ",".join(sorted(our_success))))

        their_security, our_security = (
            _security(emporix, path, method),
            _security(own, path, method),
        )
        for alternative in their_security - our_security:
            found.add(("security", *where, f"no {alternative}"))
        for alternative in our_security - their_security:
            found.add(("security", *where, alternative))
    return found


@pytest.fixture(scope="module")
def emporix() -> dict[str, Any]:
    if not EMPORIX_SPEC.is_file():
        pytest.fail(f"Emporix's OpenAPI spec is missing at {EMPORIX_SPEC}")
    spec: dict[str, Any] = schemathesis.openapi.from_path(EMPORIX_SPEC).raw_schema
    return spec


def test_the_document_differs_from_emporix_spec_only_by_the_listed_extensions(
    emporix: dict[str, Any],
) -> None:
    found = differences(emporix, DOCUMENT)
    unlisted = sorted(found - EXTENSIONS.keys())
    gone = sorted(EXTENSIONS.keys() - found)
    assert not unlisted, f"differences from Emporix's spec not listed as extensions: {unlisted}"
    assert not gone, f"listed extensions that are no longer there: {gone}"


def test_every_emporix_scope_is_declared_on_its_operation(emporix: dict[str, Any]) -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert (
        schemes["OAuth2"]["flows"]["clientCredentials"]["scopes"].keys()
        == (
            emporix["components"]["securitySchemes"]["OAuth2"]["flows"]["clientCredentials"][
                "scopes"
            ]
        ).keys()
    )
    assert schemes["CustomerAccessToken"] == {**schemes["CustomerAccessToken"], "type": "http"}
    view, manage = (
        "OAuth2 rewardspoints.rewardpoints_view",
        "OAuth2 rewardspoints.rewardpoints_manage",
    )
    expected = {
        ("get", "/reward-points/summaryBatch"): {view},
        ("get", BALANCE): {view},
        ("post", BALANCE): {manage},
        ("delete", BALANCE): {manage},
        ("post", ADD): {manage},
        ("post", REDEEM_POINTS): {manage},
        ("get", "/reward-points/public/customer"): {"CustomerAccessToken"},
        ("post", REDEEM): {"CustomerAccessToken"},
        ("post", OPTIONS): {manage},
        ("delete", OPTION): {manage},
    }
    for (method, path), alternatives in expected.items():
        assert _security(DOCUMENT, path, method) == alternatives, (method, path)
    # A token pasted as it is (Swagger UI, `rewardpoints token`) works on every employee
    # operation too.
    assert {"bearerAuth": []} in DOCUMENT["paths"][ADD]["post"]["security"]
    assert "security" not in DOCUMENT["paths"]["/health/live"]["get"]


PYDANTIC_KEYWORDS = {"ge", "le", "gt", "lt", "multiple_of", "max_digits", "decimal_places"}


def _keys_outside_property_names(node: Any, parent: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if parent not in ("properties", "paths", "schemas", "responses", "examples"):
                yield parent, key
            yield from _keys_outside_property_names(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from _keys_outside_property_names(item, parent)


def test_the_document_uses_json_schema_keywords_only() -> None:
    leaked = {(parent, key) for parent, key in _keys_outside_property_names(DOCUMENT)}
    assert not {key for _, key in leaked} & PYDANTIC_KEYWORDS, sorted(
        (parent, key) for parent, key in leaked if key in PYDANTIC_KEYWORDS
    )
    schemas = DOCUMENT["components"]["schemas"]
    coupon = schemas["CouponTemplateIn"]["properties"]
    percentage = _resolve(DOCUMENT, coupon["discountPercentage"]["anyOf"][0])
    assert (percentage["minimum"], percentage["maximum"]) == (0, 100)
    assert schemas["MoneyAmountIn"]["properties"]["amount"]["minimum"] == 0
    assert schemas["MoneyAmountIn"].get("required", []) == []
    assert schemas["OrderTotalIn"]["properties"]["amount"]["minimum"] == 0


def test_discount_type_has_its_enum_and_restrictions_their_date_time_format() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    assert schemas["CouponTemplateIn"]["properties"]["discountType"]["enum"] == [
        "PERCENT",
        "ABSOLUTE",
    ]
    restrictions = schemas["CouponRestrictionsIn"]["properties"]
    for field in ("validFrom", "validUntil"):
        assert {"type": "string", "format": "date-time"} in restrictions[field]["anyOf"]


def test_redeem_options_are_documented_without_nullable_members() -> None:
    option = DOCUMENT["components"]["schemas"]["RedeemOptionOut"]
    for field in ("description", "coupon", "pointsAfterCoupon"):
        assert "anyOf" not in option["properties"][field], option["properties"][field]
        assert field not in option["required"]


def test_every_problem_answer_has_an_example_with_its_own_status() -> None:
    seen: set[str] = set()
    for path, method in _operations(DOCUMENT):
        for status, response in DOCUMENT["paths"][path][method]["responses"].items():
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema") != {"$ref": "#/components/schemas/BadRequestBody"}:
                continue
            example = content["example"]
            assert example["status"] == int(status), (method, path, status, example)
            assert example["title"] != "Bad Request" or status == "400", example
            seen.add(status)
    assert {"400", "413", "414", "415", "431"} <= seen


def test_the_health_endpoints_are_documented_under_health() -> None:
    for path in ("/health/live", "/health/ready"):
        operation = DOCUMENT["paths"][path]["get"]
        assert operation["tags"] == ["Health"]
        assert "200" in operation["responses"]
    assert "503" in DOCUMENT["paths"]["/health/ready"]["get"]["responses"]
