"""Fuzzing with schemathesis: whatever a client sends, the service never answers 5xx, and every
answer is one its OpenAPI document lists, in the shape the document gives. Three targets:

- the service's own document (``app.openapi()``), in-process through the ASGI app, with valid
  (positive) and invalid (negative) requests;
- the same document over HTTP against a real ``rewardpoints serve``, a bounded number of cases;
- Emporix's own spec, for all its operations, against this service.

A last group provokes each error status once and validates the body against the schema the
document gives for that operation and status.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import BaseSchema, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NotSet
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from rewardpoints.app import create_app

from .conftest import MANAGE, TEST_SECRET, VIEW, bearer, make_settings, token
from .support import running_server

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

PREFIX = "/reward-points"
MANAGEMENT = "Reward Points Management"
# Emporix's spec is not part of the repository: it sits in shared/ beside the checkout (where
# .ci/run requires it), or wherever REWARDPOINTS_EMPORIX_SPEC points.
EMPORIX_SPEC = Path(
    os.environ.get("REWARDPOINTS_EMPORIX_SPEC")
    or Path(__file__).resolve().parents[2] / "shared/reference/emporix-reward-points-openapi.yml"
)

# Examples per operation in the fuzzing phase; schemathesis adds the schema's
# examples and its coverage cases (boundaries, missing and wrong-typed fields) on top.
IN_PROCESS_EXAMPLES = 25
HTTP_EXAMPLES = 15
EMPORIX_EXAMPLES = 25

# Statuses that reject invalid input, each documented by the service: 400 for a bad parameter or
# body, 401/403 for credentials, 404 for a path that names nothing, 409 for an id rule, 413 for
# a body over the limit, 414 for a path and query over theirs (a customer id and a cursor both
# past their maxLength can make one). A 5xx is never a rejection (not_a_server_error fails it).
REJECTIONS = ["400", "401", "403", "404", "409", "413", "414", "415"]

# The document the service serves, built as app.openapi() builds it. Building it opens no
# database: the engine connects on first use, and this app is never used.
DOCUMENT: dict[str, Any] = create_app(
    make_settings("postgresql+asyncpg://never-opened@127.0.0.1:1/never-opened")
).openapi()

# A fresh tenant per target, so the targets never see each other's data.
ASGI_TENANT = "fz" + secrets.token_hex(5)
HTTP_TENANT = "fh" + secrets.token_hex(5)
EMPORIX_TENANT = "fe" + secrets.token_hex(5)
CUSTOMER = "fuzz-customer"
PLAIN_PATH = re.compile(r"[A-Za-z0-9/_.~-]*")

# Fuzz cases sent, per target, operation and mode (positive or negative); reported at the end.
SENT: Counter[tuple[str, str, str]] = Counter()


def count(target: str, case: OpenApiCase) -> None:
    mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
    SENT[target, case.operation.label, mode] += 1


def fuzz_config(tenant: str, *, coverage: bool = True) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            # The coverage phase sends a fixed set of boundary and invalid values per
            # parameter, on top of max_examples; over HTTP only the fuzzing phase runs.
            "phases": {"coverage": {"enabled": coverage}},
            # The {tenant} of the redeem-option paths is the token's tenant: any other is a
            # plain 403 and would keep the fuzzer from ever reaching the operation.
            "parameters": {"path.tenant": tenant},
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
            # The token is ours to give (headers_for), not the fuzzer's to generate or drop.
            "generation": {"database": "none", "with-security-parameters": False},
        }
    )


# Loaded at import, and the app under test handed to each case (through()): schemathesis'
# fixture-based loader, schemathesis.pytest.from_fixture, fails on pytest 9.2 (it sets
# `Function._nodeid`, which pytest no longer has).
OWN = schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT), config=fuzz_config(ASGI_TENANT))
OWN_HTTP = schemathesis.openapi.from_dict(
    copy.deepcopy(DOCUMENT), config=fuzz_config(HTTP_TENANT, coverage=False)
)


def headers_for(case: OpenApiCase, tenant: str) -> dict[str, str]:
    """A signed-in customer's token for the /public/ endpoints, an employee's (view and
    manage) for every other."""
    if case.operation.path.startswith(f"{PREFIX}/public/"):
        return bearer(token(tenant, (), customer_id=CUSTOMER))
    return bearer(token(tenant, (VIEW, MANAGE)))


def through(app: Any, case: OpenApiCase) -> None:
    """Send the case, and the probes of the checks (ignored_auth sends the request again
    without the token), to ``app`` in-process."""
    case.operation.schema.app = app
    case.operation.app = app


# ---- the document as data --------------------------------------------------------------------


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def documented_body(
    document: dict[str, Any], path: str, method: str, status: int
) -> dict[str, Any] | None:
    """The JSON schema ``document`` gives for the body of ``status`` from the operation, or
    None when it documents no body (or not the status)."""
    response = document["paths"][path][method.lower()]["responses"].get(str(status))
    if response is None:
        return None
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    return None if schema is None else _resolve(document, schema)


def assert_only_documented_members(body: Any, schema: dict[str, Any]) -> None:
    """Every member of the body is a property the document names, and every property the
    document requires is there (a JSON schema without additionalProperties: false lets
    undocumented members through: this does not)."""
    assert isinstance(body, dict), body
    properties = set(schema.get("properties", {}))
    assert set(body) <= properties, f"undocumented members {set(body) - properties}: {body}"
    missing = set(schema.get("required", [])) - set(body)
    assert not missing, f"documented as required but absent: {missing}: {body}"


def assert_instance_names_the_path(instance: Any, response: Response | httpx.Response) -> None:
    """`instance` is the request's path without /reward-points (CONTRACT.md section 4). Only
    a plain path is compared exactly: the client library, the HTTP server and the framework
    each normalise escapes, tabs and the like in their own way."""
    assert isinstance(instance, str) and instance.startswith("/"), instance
    sent = urlsplit(str(response.request.url)).path
    if PLAIN_PATH.fullmatch(sent):
        assert instance == (sent.removeprefix(PREFIX) or "/"), (instance, sent)


# ---- checks beyond schemathesis' own ---------------------------------------------------------


def error_body_as_documented(
    ctx: CheckContext, response: Response, case: OpenApiCase
) -> bool | None:
    """An error body has exactly the members the document gives it; a 400 is the problem
    shape of CONTRACT.md section 4, naming the request's path."""
    if case.method.lower() not in DOCUMENT["paths"][case.operation.path]:
        # schemathesis also sends methods the path does not have
        assert response.status_code == 405, response.status_code
        return None
    if response.status_code < 400:
        return None
    schema = documented_body(DOCUMENT, case.operation.path, case.method, response.status_code)
    if schema is None:
        return None  # status_code_conformance reports a status the document does not list
    body = response.json()
    assert_only_documented_members(body, schema)
    if response.status_code == 400:
        assert body["type"] == "about:blank", body
        assert body["title"] == "Bad Request", body
        assert body["status"] == 400, body
        assert isinstance(body["detail"], str) and body["detail"], body
        assert_instance_names_the_path(body["instance"], response)
    return None


OWN_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    # a token is required: the request without it must be refused
    ignored_auth,
    # a method the path does not have: 405 with an Allow header
    unsupported_method,
    error_body_as_documented,
]


# ---- the service's own document, in-process --------------------------------------------------


@pytest.fixture
def fuzz_app(database_url: str) -> Iterator[Any]:
    """The app under test. schemathesis drives it on an event loop of its own, which also
    runs the app's lifespan; ending the lifespans there disposes of the engine on that loop."""
    app = create_app(make_settings(database_url))
    assert app.openapi() == DOCUMENT
    try:
        yield app
    finally:
        shutdown_lifespans()


@settings(
    max_examples=IN_PROCESS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@OWN.parametrize()
def test_every_answer_of_the_service_is_one_its_document_gives(
    case: OpenApiCase, fuzz_app: Any
) -> None:
    count("own, in-process", case)
    through(fuzz_app, case)
    case.call_and_validate(
        base_url="http://testserver",
        headers=headers_for(case, ASGI_TENANT),
        checks=OWN_CHECKS,
    )


# ---- the service's own document, over HTTP ---------------------------------------------------


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``rewardpoints serve``, serving the same document."""
    workdir = tmp_path_factory.mktemp("fuzz-server")
    env = {"REWARDPOINTS_DATABASE_URL": pg_url, "REWARDPOINTS_JWT_SECRET": TEST_SECRET}
    with contextlib.ExitStack() as stack:
        # The server reads `.env` from its working directory: start it where there is none.
        with contextlib.chdir(workdir):
            base = stack.enter_context(running_server(env))
        served = httpx.get(f"{base}/openapi.json", timeout=10)
        assert served.status_code == 200, served.text
        assert served.json() == DOCUMENT
        yield base


@pytest.mark.slow
@settings(
    max_examples=HTTP_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@OWN_HTTP.parametrize()
def test_every_answer_over_http_is_one_the_document_gives(case: OpenApiCase, server: str) -> None:
    count("own, over HTTP", case)
    case.call_and_validate(
        base_url=server,
        headers=headers_for(case, HTTP_TENANT),
        checks=OWN_CHECKS,
        timeout=30,
    )


# ---- Emporix's spec --------------------------------------------------------------------------

# Statuses Emporix's spec does not list for an operation but CONTRACT.md prescribes. They are
# accepted only where this service's own document lists them for the operation, and then their
# body must match this service's schema (the Emporix shapes of CONTRACT.md section 4):
CONTRACT_STATUSES = {
    # §4: malformed input is a 400, e.g. a customerId over 255 characters or with a NUL, on
    # DELETE /customer/{id} and GET /customer/{id}/summary too, where Emporix lists no 400.
    400: "CONTRACT.md §4 (schema violations are 400)",
    # §3: a missing or bad token is a 401 on every endpoint; Emporix omits it on GET /customer/{id}.
    401: "CONTRACT.md §3 (missing or bad token)",
    # §2: a customer with no entry is a 404 on GET /customer/{id}, DELETE and redeemPoints,
    # where Emporix lists none.
    404: "CONTRACT.md §2 (customer with no entry)",
    # §2: the same entry id with other content is a 409 on addPoints and redeemPoints.
    409: "CONTRACT.md §2 (entry id reused with other content)",
    # A body over the configured limit (REWARDPOINTS_MAX_BODY_BYTES) is refused unread.
    413: "body over the limit",
    # A body without Content-Type: application/json, as Emporix's service answers it.
    415: "body not sent as JSON",
    # §4: the database cannot be reached.
    503: "CONTRACT.md §4 (database unreachable)",
}


def _load_emporix() -> BaseSchema | None:
    if not EMPORIX_SPEC.is_file():
        return None
    return schemathesis.openapi.from_path(EMPORIX_SPEC, config=fuzz_config(EMPORIX_TENANT))


EMPORIX = _load_emporix()


def test_emporix_spec_is_beside_the_repository() -> None:
    missing = (
        f"Emporix's OpenAPI spec is missing at {EMPORIX_SPEC} (shared/ beside the checkout, or "
        "REWARDPOINTS_EMPORIX_SPEC): the fuzzing against Emporix's spec cannot run"
    )
    if EMPORIX is None and not os.environ.get("REWARDPOINTS_REQUIRE_EMPORIX_SPEC"):
        pytest.skip(missing)
    assert EMPORIX is not None, missing


def status_per_emporix_or_contract(
    ctx: CheckContext, response: Response, case: OpenApiCase
) -> bool | None:
    """Replaces status_code_conformance for Emporix's spec: a status Emporix lists is checked
    against Emporix's schema (by response_schema_conformance); any other must be one
    CONTRACT.md prescribes, listed by this service's document and in this service's shape."""
    status = response.status_code
    if case.method.lower() not in DOCUMENT["paths"][case.operation.path]:
        # schemathesis also sends methods the path does not have
        assert status == 405, status
        return None
    if str(status) in case.operation.definition.raw.get("responses", {}):
        return None
    assert status in CONTRACT_STATUSES, (
        f"{status} is neither in Emporix's spec for {case.operation.label} nor prescribed by "
        "CONTRACT.md"
    )
    own = OWN[case.operation.path][case.method]
    documented = DOCUMENT["paths"][case.operation.path][case.method.lower()]["responses"]
    assert str(status) in documented, (
        f"{status} ({CONTRACT_STATUSES[status]}) is not in this service's document for "
        f"{case.operation.label}"
    )
    own.validate_response(response)
    schema = documented_body(DOCUMENT, case.operation.path, case.method, status)
    if schema is not None:
        assert_only_documented_members(response.json(), schema)
    return None


def _request_body_validator(path: str, method: str) -> jsonschema_rs.Validator | None:
    """This service's schema for the operation's body (jsonschema_rs: schemathesis' own
    validator)."""
    content = DOCUMENT["paths"][path][method.lower()].get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return None
    return jsonschema_rs.Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def negative_data_rejected_unless_the_contract_accepts_it(
    ctx: CheckContext, response: Response, case: OpenApiCase
) -> bool | None:
    """Replaces negative_data_rejection for Emporix's spec. A body Emporix's schema calls
    invalid may still be one CONTRACT.md accepts, and then this service's document accepts it
    too: no body, or JSON null, on POST /customer/{id} (§2, the body is optional), and null for
    the fields the server computes (`allPointsAfterCreation`, `usedPoints`, `usedWith`,
    `createdAt`: accepted and ignored, §2). Such a body may succeed; any other must be refused."""
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        validator = _request_body_validator(case.operation.path, case.method)
        if (
            200 <= response.status_code < 300
            and validator is not None
            and validator.is_valid(None if isinstance(case.body, NotSet) else case.body)
        ):
            return None
        raise


EMPORIX_CHECKS = [
    not_a_server_error,
    content_type_conformance,
    # Emporix's schemas, for every status Emporix lists.
    response_schema_conformance,
    status_per_emporix_or_contract,
    negative_data_rejected_unless_the_contract_accepts_it,
    unsupported_method,
]

if EMPORIX is not None:

    @pytest.fixture
    def emporix_app(database_url: str) -> Iterator[Any]:
        app = create_app(make_settings(database_url))
        try:
            yield app
        finally:
            shutdown_lifespans()

    @settings(
        max_examples=EMPORIX_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @EMPORIX.parametrize()
    def test_answers_match_emporix_spec(case: OpenApiCase, emporix_app: Any) -> None:
        # Emporix's spec declares OAuth2 client credentials, which a fuzzer cannot obtain:
        # the bearer token is passed explicitly.
        count("Emporix spec, in-process", case)
        through(emporix_app, case)
        case.call_and_validate(
            base_url="http://testserver",
            headers=headers_for(case, EMPORIX_TENANT),
            checks=EMPORIX_CHECKS,
        )


# ---- the document describes the real error bodies --------------------------------------------

BALANCE = f"{PREFIX}/customer/{{customerId}}"
ADD = f"{PREFIX}/customer/{{customerId}}/addPoints"
CREATE = f"{PREFIX}/customer/{{customerId}}"


async def _provoke(
    client: httpx.AsyncClient, tenant: str, status: int
) -> tuple[str, str, httpx.Response]:
    """Send what CONTRACT.md answers with ``status``; returns (path template, method, response)."""
    employee = bearer(token(tenant, (VIEW, MANAGE)))
    if status == 400:
        response = await client.post(
            f"{PREFIX}/customer/c1/addPoints", json={"points": 0}, headers=employee
        )
        return ADD, "POST", response
    if status == 401:
        return BALANCE, "GET", await client.get(f"{PREFIX}/customer/c1")
    if status == 403:
        manage_only = bearer(token(tenant, (MANAGE,)))
        return BALANCE, "GET", await client.get(f"{PREFIX}/customer/c1", headers=manage_only)
    if status == 404:
        return BALANCE, "GET", await client.get(f"{PREFIX}/customer/nobody", headers=employee)
    if status == 409:
        first = await client.post(f"{PREFIX}/customer/c2", headers=employee)
        assert first.status_code == 200, first.text
        return CREATE, "POST", await client.post(f"{PREFIX}/customer/c2", headers=employee)
    raise AssertionError(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
async def test_document_describes_the_real_error_body(
    client: httpx.AsyncClient, tenant: str, status: int
) -> None:
    path, method, response = await _provoke(client, tenant, status)

    assert response.status_code == status, response.text
    documented = DOCUMENT["paths"][path][method.lower()]["responses"]
    assert str(status) in documented, f"{status} is not documented for {method} {path}"
    schema = documented_body(DOCUMENT, path, method, status)
    assert schema is not None, f"no body documented for {status} of {method} {path}"
    # schemathesis' own validation, against the schema the document gives for the status
    OWN[path][method].validate_response(response)
    assert_only_documented_members(response.json(), schema)


async def test_document_describes_the_conflict_body_of_a_reused_entry_id(
    client: httpx.AsyncClient, tenant: str
) -> None:
    employee = bearer(token(tenant, (VIEW, MANAGE)))
    first = await client.post(
        f"{PREFIX}/customer/c1/addPoints", json={"id": "lot-1", "points": 10}, headers=employee
    )
    assert first.status_code == 201, first.text

    response = await client.post(
        f"{PREFIX}/customer/c1/addPoints", json={"id": "lot-1", "points": 11}, headers=employee
    )

    assert response.status_code == 409, response.text
    schema = documented_body(DOCUMENT, ADD, "POST", 409)
    assert schema is not None
    OWN[ADD]["POST"].validate_response(response)
    assert_only_documented_members(response.json(), schema)


# ---- the count -------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def report_cases_sent(request: pytest.FixtureRequest) -> Iterator[None]:
    """How many cases each target sent, printed once the module is done."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not SENT:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for target in sorted({target for target, _, _ in SENT}):
            sent = {key: n for key, n in SENT.items() if key[0] == target}
            modes: Counter[str] = Counter()
            for (_, _, mode), n in sent.items():
                modes[mode] += n
            operations = len({label for _, label, _ in sent})
            reporter.write_line(
                f"fuzz cases, {target}: {sum(sent.values())} over {operations} operations "
                f"({', '.join(f'{n} {mode}' for mode, n in sorted(modes.items()))})"
            )
