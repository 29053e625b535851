"""Bearer JWTs through real HTTP on the ASGI app: real tokens, signed with real keys.

HS256 with a shared secret, RS256/ES256 with a PEM public key or a JWKS document served by a
real HTTP server on loopback. Every refusal is checked for its exact status and Emporix body.
Authentication does not touch the database, so the matrix runs on PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt

from rewardpoints.app import create_app
from rewardpoints.auth import JwksCache, mint_token
from rewardpoints.config import Settings

from .conftest import MANAGE, TEST_SECRET, VIEW, bearer, make_settings
from .support import free_port

VIEW_ALIAS = "saasag.rewardpoints_view"
MANAGE_ALIAS = "saasag.rewardpoints_manage"
ISSUER = "https://auth.example.test/oauth"
AUDIENCE = "rewardpoints-api"

UNAUTHORIZED = {
    "fault": {
        "faultstring": "Invalid access token",
        "detail": {"errorcode": "oauth.v2.InvalidAccessToken"},
    }
}
VIEW_DENIED = {
    "code": 403,
    "status": "Forbidden",
    "message": "Scope validation failed",
    "details": [
        "Missing required scopes '[rewardspoints.rewardpoints_view, saasag.rewardpoints_view]'"
    ],
}
MANAGE_DENIED = {
    "code": 403,
    "status": "Forbidden",
    "message": "Scope validation failed",
    "details": [
        "Missing required scopes '[rewardspoints.rewardpoints_manage, saasag.rewardpoints_manage]'"
    ],
}
CUSTOMER_DENIED = {
    "code": 403,
    "status": "Forbidden",
    "message": "Scope validation failed",
    "details": ["Customer tokens may not use this endpoint"],
}

ABSENT = object()  # a claim value meaning "leave this claim out"


# ---- tokens ----------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims_for(
    tenant: str | None, scopes: tuple[str, ...] = (VIEW, MANAGE), **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "operator",
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + 600,
    }
    if tenant is not None:
        claims["tenant"] = tenant
    for name, value in extra.items():
        if value is ABSENT:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def signed(
    claims: dict[str, Any],
    key: str = TEST_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    token: str = jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    return token


def hand_made(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token built byte by byte: unsigned when ``hmac_key`` is None, else HMAC-SHA256."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def hs256(tenant: str, scopes: tuple[str, ...] = (VIEW, MANAGE), **extra: Any) -> dict[str, str]:
    return bearer(signed(claims_for(tenant, scopes, **extra)))


# ---- keys ------------------------------------------------------------------------------------


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or (value.bit_length() + 7) // 8, "big")


def jwk_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    """The public half of ``key`` as a JWK (RFC 7517), built from the key's numbers."""
    if isinstance(key, rsa.RSAPrivateKey):
        rsa_numbers = key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": "RS256",
            "n": b64url(_int_bytes(rsa_numbers.n)),
            "e": b64url(_int_bytes(rsa_numbers.e)),
        }
    ec_numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
        "crv": "P-256",
        "x": b64url(_int_bytes(ec_numbers.x, 32)),
        "y": b64url(_int_bytes(ec_numbers.y, 32)),
    }


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# ---- the app and a JWKS server ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, *, jwks: JwksCache | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, jwks=jwks)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http
    finally:
        await app.state.ledger.engine.dispose()


@pytest.fixture(scope="module")
async def hs_client(pg_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The default configuration: HS256 with the shared test secret."""
    async with serving(make_settings(pg_url)) as http:
        yield http


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class JwksServer:
    """A key server on loopback whose document and status the test can change."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.status = 200
        self.hits = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with outer._lock:
                    outer.hits += 1
                    status = outer.status
                    body = json.dumps(outer.document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def serve(self, *keys: dict[str, str]) -> None:
        with self._lock:
            self.document = {"keys": list(keys)}

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


@pytest.fixture
def attacker_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


def jwks_settings(pg_url: str, url: str, **overrides: Any) -> Settings:
    return make_settings(pg_url, jwt_secret=None, jwt_jwks_url=url, **overrides)


# ---- assertions ------------------------------------------------------------------------------


async def assert_unauthorized(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Refused with 401 on a view endpoint and on a writing one."""
    for method, path, body in (
        ("GET", "/reward-points/summaryBatch", None),
        ("POST", "/reward-points/customer/c1/addPoints", {"points": 5}),
    ):
        response = await http.request(method, path, headers=headers, json=body)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json() == UNAUTHORIZED
        assert response.headers["www-authenticate"] == "Bearer"


async def assert_accepted(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """The token writes and then reads the same customer's points."""
    customer = "c" + secrets.token_hex(4)
    added = await http.post(
        f"/reward-points/customer/{customer}/addPoints", json={"points": 7}, headers=headers
    )
    assert added.status_code == 201, added.text
    balance = await http.get(f"/reward-points/customer/{customer}", headers=headers)
    assert balance.status_code == 200, balance.text
    assert balance.json() == 7


# ---- the token itself: presence, scheme, signature, algorithm --------------------------------


async def test_valid_hs256_token_is_accepted(hs_client: httpx.AsyncClient, tenant: str) -> None:
    await assert_accepted(hs_client, hs256(tenant))


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer",
        "Bearer ",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnQiOiJhYmMifQ",
    ],
    ids=[
        "no-header",
        "basic-scheme",
        "bearer-alone",
        "bearer-empty",
        "garbage",
        "three-garbage-segments",
        "two-segments",
    ],
)
async def test_missing_or_malformed_authorization_is_401(
    hs_client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    await assert_unauthorized(hs_client, headers)


async def test_valid_token_under_another_scheme_is_401(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    token = signed(claims_for(tenant))
    await assert_unauthorized(hs_client, {"Authorization": f"Token {token}"})
    await assert_accepted(hs_client, bearer(token))


async def test_token_signed_with_another_secret_is_401(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    forged = signed(claims_for(tenant), key="another-secret-" + "x" * 40)
    await assert_unauthorized(hs_client, bearer(forged))


async def test_token_with_tampered_claims_is_401(hs_client: httpx.AsyncClient, tenant: str) -> None:
    header, _, signature = signed(claims_for(tenant, (VIEW,))).split(".")
    escalated = segment(claims_for(tenant, (VIEW, MANAGE)))
    await assert_unauthorized(hs_client, bearer(f"{header}.{escalated}.{signature}"))


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_unsigned_alg_none_token_is_401(
    hs_client: httpx.AsyncClient, tenant: str, alg: str
) -> None:
    unsigned = hand_made({"alg": alg, "typ": "JWT"}, claims_for(tenant), None)
    await assert_unauthorized(hs_client, bearer(unsigned))


async def test_alg_none_token_carrying_a_valid_signature_is_401(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    token = hand_made({"alg": "none", "typ": "JWT"}, claims_for(tenant), TEST_SECRET.encode())
    await assert_unauthorized(hs_client, bearer(token))


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
async def test_algorithm_not_configured_is_401_even_with_the_right_secret(
    hs_client: httpx.AsyncClient, tenant: str, algorithm: str
) -> None:
    token = signed(claims_for(tenant), algorithm=algorithm)
    await assert_unauthorized(hs_client, bearer(token))


async def test_configured_hs512_accepts_hs512_and_refuses_hs256(pg_url: str, tenant: str) -> None:
    async with serving(make_settings(pg_url, jwt_algorithms="HS512")) as http:
        await assert_accepted(http, bearer(signed(claims_for(tenant), algorithm="HS512")))
        await assert_unauthorized(http, bearer(signed(claims_for(tenant))))


async def test_hs256_token_keyed_with_the_rsa_public_pem_is_401_when_only_rs256_is_configured(
    pg_url: str, rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    pem = public_pem(rsa_key)
    settings = make_settings(pg_url, jwt_secret=None, jwt_public_key=pem, jwt_algorithms="RS256")
    async with serving(settings) as http:
        for key_text in (pem, pem.strip()):
            confused = hand_made(
                {"alg": "HS256", "typ": "JWT"}, claims_for(tenant), key_text.encode()
            )
            await assert_unauthorized(http, bearer(confused))
        await assert_accepted(
            http, bearer(signed(claims_for(tenant), private_pem(rsa_key), "RS256"))
        )


async def test_hs256_token_keyed_with_the_rsa_public_pem_is_401_when_both_are_configured(
    pg_url: str, rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    pem = public_pem(rsa_key)
    settings = make_settings(pg_url, jwt_public_key=pem, jwt_algorithms="HS256,RS256")
    async with serving(settings) as http:
        for key_text in (pem, pem.strip()):
            confused = hand_made(
                {"alg": "HS256", "typ": "JWT"}, claims_for(tenant), key_text.encode()
            )
            await assert_unauthorized(http, bearer(confused))
        # Both configured algorithms work with their own keys.
        await assert_accepted(http, hs256(tenant))
        await assert_accepted(
            http, bearer(signed(claims_for(tenant), private_pem(rsa_key), "RS256"))
        )


# ---- time: exp, nbf, iat and the leeway ------------------------------------------------------


@pytest.mark.parametrize(
    ("offsets", "accepted"),
    [
        ({"exp": -120}, False),
        ({"exp": -10}, True),
        ({"exp": None}, False),
        ({"nbf": 120}, False),
        ({"nbf": 10}, True),
        ({"iat": 120}, False),
        ({"iat": 10}, True),
    ],
    ids=[
        "expired-beyond-leeway",
        "expired-within-leeway",
        "no-exp",
        "nbf-future-beyond-leeway",
        "nbf-future-within-leeway",
        "iat-future-beyond-leeway",
        "iat-future-within-leeway",
    ],
)
async def test_time_claims_are_checked_with_a_leeway(
    hs_client: httpx.AsyncClient,
    tenant: str,
    offsets: dict[str, int | None],
    accepted: bool,
) -> None:
    now = int(time.time())
    extra: dict[str, Any] = {
        name: ABSENT if offset is None else now + offset for name, offset in offsets.items()
    }
    headers = hs256(tenant, **extra)
    if accepted:
        await assert_accepted(hs_client, headers)
    else:
        await assert_unauthorized(hs_client, headers)


async def test_leeway_is_configurable(pg_url: str, tenant: str) -> None:
    async with serving(make_settings(pg_url, jwt_leeway_seconds=0)) as http:
        await assert_unauthorized(http, hs256(tenant, exp=int(time.time()) - 10))
        await assert_accepted(http, hs256(tenant))


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": None},
        {"exp": "tomorrow"},
        {"exp": [1]},
        {"exp": float("inf")},
        {"nbf": None},
        {"nbf": {"at": 1}},
        {"iat": None},
        {"iat": float("inf")},
        {"sub": 42},
        {"scope": 42},
        {"scp": [VIEW, 42]},
        {"tenant": 42},
        {"customerId": 42},
    ],
    ids=lambda claims: "-".join(f"{k}={v!r}" for k, v in claims.items()),
)
async def test_claims_of_the_wrong_type_are_401(
    hs_client: httpx.AsyncClient, tenant: str, claims: dict[str, Any]
) -> None:
    token = hand_made(
        {"alg": "HS256", "typ": "JWT"}, {**claims_for(tenant), **claims}, TEST_SECRET.encode()
    )
    await assert_unauthorized(hs_client, bearer(token))


@pytest.mark.parametrize(
    ("claim", "offset", "accepted_as_number"),
    [
        ("exp", 3600, True),
        ("iat", -60, True),
        ("iat", 3600, False),
        ("nbf", -60, True),
    ],
)
async def test_time_claims_sent_as_strings_are_401(
    hs_client: httpx.AsyncClient,
    tenant: str,
    claim: str,
    offset: int,
    accepted_as_number: bool,
) -> None:
    """RFC 7519's NumericDate is a JSON number: ``"1796650735"`` is refused whatever time it
    names, while the same time as a number is judged by the time alone."""
    value = int(time.time()) + offset
    as_string = hand_made(
        {"alg": "HS256", "typ": "JWT"},
        {**claims_for(tenant), claim: str(value)},
        TEST_SECRET.encode(),
    )
    await assert_unauthorized(hs_client, bearer(as_string))
    as_number = hand_made(
        {"alg": "HS256", "typ": "JWT"}, {**claims_for(tenant), claim: value}, TEST_SECRET.encode()
    )
    if accepted_as_number:
        await assert_accepted(hs_client, bearer(as_number))
    else:
        await assert_unauthorized(hs_client, bearer(as_number))


@pytest.mark.parametrize(
    "claims",
    [
        {"iat": True},
        {"iat": False},
        {"nbf": True},
        {"nbf": False},
        {"iat": -1},
        {"nbf": -1},
        {"exp": 1e300},
        {"exp": 253_402_300_800},  # 10000-01-01T00:00:00Z
        {"exp": 10**400},
    ],
    ids=lambda claims: "-".join(f"{k}={v!r}"[:24] for k, v in claims.items()),
)
async def test_time_claims_that_name_no_date_are_401(
    hs_client: httpx.AsyncClient, tenant: str, claims: dict[str, Any]
) -> None:
    """Booleans (an int to Python), times before 1970 and after 9999, and numbers no float
    holds are no NumericDate: refused with the 401, never a 500 and never a token without end."""
    token = hand_made(
        {"alg": "HS256", "typ": "JWT"}, {**claims_for(tenant), **claims}, TEST_SECRET.encode()
    )
    await assert_unauthorized(hs_client, bearer(token))


# ---- issuer and audience ---------------------------------------------------------------------


@pytest.fixture(scope="module")
async def iss_aud_client(pg_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_settings(pg_url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)) as http:
        yield http


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"iss": ISSUER, "aud": AUDIENCE}, True),
        ({"iss": ISSUER, "aud": ["another-api", AUDIENCE]}, True),
        ({"iss": ISSUER, "aud": "another-api"}, False),
        ({"iss": ISSUER, "aud": ["another-api", "third-api"]}, False),
        ({"iss": ISSUER}, False),
        ({"iss": "https://evil.example.test/oauth", "aud": AUDIENCE}, False),
        ({"iss": ISSUER + "/", "aud": AUDIENCE}, False),
        ({"aud": AUDIENCE}, False),
    ],
    ids=[
        "right-iss-and-aud",
        "aud-list-containing-audience",
        "wrong-aud",
        "aud-list-without-audience",
        "missing-aud",
        "wrong-iss",
        "iss-with-trailing-slash",
        "missing-iss",
    ],
)
async def test_issuer_and_audience_are_demanded_when_configured(
    iss_aud_client: httpx.AsyncClient, tenant: str, claims: dict[str, Any], accepted: bool
) -> None:
    headers = hs256(tenant, **claims)
    if accepted:
        await assert_accepted(iss_aud_client, headers)
    else:
        await assert_unauthorized(iss_aud_client, headers)


async def test_issuer_and_audience_are_ignored_when_not_configured(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    await assert_accepted(hs_client, hs256(tenant, iss="https://anyone.test", aud="anything"))


# ---- tenant and scopes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_tenant",
    ["Tenant1", "ab", "a" * 17, "public", "customer", "", "-abc", "tenant/x", "tenant.x"],
    ids=[
        "uppercase",
        "too-short",
        "17-chars",
        "public",
        "customer",
        "empty",
        "leading-dash",
        "slash",
        "dot",
    ],
)
async def test_token_with_an_invalid_tenant_is_401(
    hs_client: httpx.AsyncClient, bad_tenant: str
) -> None:
    await assert_unauthorized(hs_client, hs256(bad_tenant))
    # The same name in the Emporix form is refused as well.
    scope = f"tenant={bad_tenant} {VIEW} {MANAGE}"
    await assert_unauthorized(hs_client, bearer(signed(claims_for(None, scope=scope))))


async def test_token_without_a_tenant_is_401(hs_client: httpx.AsyncClient) -> None:
    await assert_unauthorized(hs_client, bearer(signed(claims_for(None))))


@pytest.mark.parametrize("length", [3, 16])
async def test_tenant_of_3_to_16_characters_is_accepted(
    hs_client: httpx.AsyncClient, length: int
) -> None:
    name = ("t" + secrets.token_hex(8))[:length]
    await assert_accepted(hs_client, hs256(name))


async def test_tenant_is_read_from_the_scope_string_in_the_emporix_form(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    scope = f"tenant={tenant} {VIEW} {MANAGE}"
    emporix = bearer(signed(claims_for(None, scope=scope)))
    added = await hs_client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 11}, headers=emporix
    )
    assert added.status_code == 201, added.text
    # The points landed on that tenant: a token naming it in the `tenant` claim sees them.
    balance = await hs_client.get("/reward-points/customer/c1", headers=hs256(tenant))
    assert (balance.status_code, balance.json()) == (200, 11)


async def test_scopes_are_read_from_an_scp_list(hs_client: httpx.AsyncClient, tenant: str) -> None:
    await assert_accepted(hs_client, hs256(tenant, scope=ABSENT, scp=[VIEW, MANAGE]))
    view_only = hs256(tenant, scope=ABSENT, scp=[VIEW])
    denied = await hs_client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 1}, headers=view_only
    )
    assert (denied.status_code, denied.json()) == (403, MANAGE_DENIED)


VIEW_ENDPOINTS = [
    ("GET", "/reward-points/customer/c1", None),
    ("GET", "/reward-points/customer/c1/summary", None),
    ("GET", "/reward-points/summaryBatch", None),
]
MANAGE_ENDPOINTS = [
    ("POST", "/reward-points/customer/c1/addPoints", {"points": 5}),
    ("POST", "/reward-points/customer/c1/redeemPoints", {"points": 1}),
    ("POST", "/reward-points/customer/c2", {"startPoints": {"points": 5}}),
    ("DELETE", "/reward-points/customer/c1", None),
]


async def _seed(http: httpx.AsyncClient, tenant: str) -> None:
    """Customer c1 with 10 points, so every endpoint would succeed with the right scope."""
    added = await http.post(
        "/reward-points/customer/c1/addPoints", json={"points": 10}, headers=hs256(tenant)
    )
    assert added.status_code == 201, added.text


async def _summary(http: httpx.AsyncClient, tenant: str, customer: str = "c1") -> Any:
    response = await http.get(f"/reward-points/customer/{customer}/summary", headers=hs256(tenant))
    return response.status_code, response.json()


async def test_view_only_token_cannot_write(hs_client: httpx.AsyncClient, tenant: str) -> None:
    await _seed(hs_client, tenant)
    before = await _summary(hs_client, tenant)
    for view_scope in (VIEW, VIEW_ALIAS):
        for method, path, body in MANAGE_ENDPOINTS:
            response = await hs_client.request(
                method, path, json=body, headers=hs256(tenant, (view_scope,))
            )
            assert (response.status_code, response.json()) == (403, MANAGE_DENIED), (method, path)
    assert await _summary(hs_client, tenant) == before
    assert (await _summary(hs_client, tenant, "c2"))[0] == 404


async def test_manage_does_not_imply_view(hs_client: httpx.AsyncClient, tenant: str) -> None:
    await _seed(hs_client, tenant)
    for manage_scope in (MANAGE, MANAGE_ALIAS):
        for method, path, body in VIEW_ENDPOINTS:
            response = await hs_client.request(
                method, path, json=body, headers=hs256(tenant, (manage_scope,))
            )
            assert (response.status_code, response.json()) == (403, VIEW_DENIED), (method, path)


async def test_token_without_any_reward_points_scope_is_403(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    headers = hs256(tenant, ("customer.customer_read", "rewardspoints.rewardpoints_viewer"))
    view = await hs_client.get("/reward-points/summaryBatch", headers=headers)
    assert (view.status_code, view.json()) == (403, VIEW_DENIED)
    write = await hs_client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 1}, headers=headers
    )
    assert (write.status_code, write.json()) == (403, MANAGE_DENIED)


async def test_saasag_aliases_grant_view_and_manage(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    manage = hs256(tenant, (MANAGE_ALIAS,))
    view = hs256(tenant, (VIEW_ALIAS,))
    created = await hs_client.post(
        "/reward-points/customer/c1", json={"startPoints": {"points": 4}}, headers=manage
    )
    assert created.status_code == 200, created.text
    added = await hs_client.post(
        "/reward-points/customer/c1/addPoints", json={"points": 6}, headers=manage
    )
    assert added.status_code == 201, added.text
    redeemed = await hs_client.post(
        "/reward-points/customer/c1/redeemPoints", json={"points": 3}, headers=manage
    )
    assert redeemed.status_code == 201, redeemed.text
    balance = await hs_client.get("/reward-points/customer/c1", headers=view)
    assert (balance.status_code, balance.json()) == (200, 7)
    summary = await hs_client.get("/reward-points/customer/c1/summary", headers=view)
    assert summary.status_code == 200
    assert summary.json()["activePoints"] == 7
    batch = await hs_client.get("/reward-points/summaryBatch", headers=view)
    assert batch.status_code == 200
    assert [entry["customerId"] for entry in batch.json()] == ["c1"]
    deleted = await hs_client.delete("/reward-points/customer/c1", headers=manage)
    assert deleted.status_code == 200
    gone = await hs_client.get("/reward-points/customer/c1", headers=view)
    assert gone.status_code == 404


async def test_customer_token_is_refused_on_every_admin_endpoint(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    await _seed(hs_client, tenant)
    before = await _summary(hs_client, tenant)
    customer = bearer(token_for_customer(tenant, "c1"))
    for method, path, body in VIEW_ENDPOINTS + MANAGE_ENDPOINTS:
        response = await hs_client.request(method, path, json=body, headers=customer)
        assert (response.status_code, response.json()) == (403, CUSTOMER_DENIED), (method, path)
    assert await _summary(hs_client, tenant) == before


def token_for_customer(tenant: str, customer_id: str) -> str:
    return mint_token(TEST_SECRET, tenant=tenant, scopes=(VIEW, MANAGE), customer_id=customer_id)


# ---- the Emporix-Tenant header ---------------------------------------------------------------


async def test_emporix_tenant_header_equal_to_the_token_tenant_is_accepted(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    await assert_accepted(hs_client, {**hs256(tenant), "Emporix-Tenant": tenant})


async def test_emporix_tenant_header_naming_another_tenant_is_403(
    hs_client: httpx.AsyncClient, tenant: str
) -> None:
    other = "b" + secrets.token_hex(6)
    headers = {**hs256(tenant), "Emporix-Tenant": other}
    expected = {
        "code": 403,
        "status": "Forbidden",
        "message": "Tenant validation failed",
        "details": [f"Emporix-Tenant '{other}' does not match the token's tenant"],
    }
    for method, path, body in VIEW_ENDPOINTS + MANAGE_ENDPOINTS:
        response = await hs_client.request(method, path, json=body, headers=headers)
        assert (response.status_code, response.json()) == (403, expected), (method, path)
    for name in (tenant, other):
        nothing = await hs_client.get("/reward-points/summaryBatch", headers=hs256(name))
        assert (nothing.status_code, nothing.json()) == (200, [])


# ---- public keys: RS256 and ES256 ------------------------------------------------------------


async def test_rs256_with_a_pem_public_key(
    pg_url: str, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    settings = make_settings(pg_url, jwt_secret=None, jwt_public_key=public_pem(rsa_key))
    assert settings.algorithms == ("RS256",)
    async with serving(settings) as http:
        await assert_accepted(
            http, bearer(signed(claims_for(tenant), private_pem(rsa_key), "RS256"))
        )
        foreign = signed(claims_for(tenant), private_pem(other_rsa_key), "RS256")
        await assert_unauthorized(http, bearer(foreign))
        # No secret is configured, so HS256 is neither implied nor verifiable.
        await assert_unauthorized(http, hs256(tenant))
        stronger = signed(claims_for(tenant), private_pem(rsa_key), "RS512")
        await assert_unauthorized(http, bearer(stronger))


async def test_rs256_public_key_may_be_given_as_a_file_path(
    pg_url: str, rsa_key: rsa.RSAPrivateKey, tenant: str, tmp_path: Path
) -> None:
    path = tmp_path / "public.pem"
    path.write_text(public_pem(rsa_key))
    settings = make_settings(pg_url, jwt_secret=None, jwt_public_key=str(path))
    async with serving(settings) as http:
        await assert_accepted(
            http, bearer(signed(claims_for(tenant), private_pem(rsa_key), "RS256"))
        )


async def test_es256_algorithm_is_implied_by_an_ec_public_key(
    pg_url: str,
    ec_key: ec.EllipticCurvePrivateKey,
    other_ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    tenant: str,
) -> None:
    settings = make_settings(pg_url, jwt_secret=None, jwt_public_key=public_pem(ec_key))
    assert settings.algorithms == ("ES256",)
    async with serving(settings) as http:
        await assert_accepted(
            http, bearer(signed(claims_for(tenant), private_pem(ec_key), "ES256"))
        )
        foreign = signed(claims_for(tenant), private_pem(other_ec_key), "ES256")
        await assert_unauthorized(http, bearer(foreign))
        rs256 = signed(claims_for(tenant), private_pem(rsa_key), "RS256")
        await assert_unauthorized(http, bearer(rs256))


# ---- JWKS ------------------------------------------------------------------------------------


def rs256_with_kid(key: rsa.RSAPrivateKey, kid: str, tenant: str, **headers: Any) -> dict[str, str]:
    return bearer(signed(claims_for(tenant), private_pem(key), "RS256", {"kid": kid, **headers}))


async def test_jwks_url_setting_verifies_rs256_and_es256_tokens_by_kid(
    pg_url: str,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    tenant: str,
) -> None:
    jwks_server.serve(
        jwk_of(rsa_key, "rsa-1"), jwk_of(other_rsa_key, "rsa-2"), jwk_of(ec_key, "ec-1")
    )
    async with serving(jwks_settings(pg_url, jwks_server.url)) as http:
        await assert_accepted(http, rs256_with_kid(rsa_key, "rsa-1", tenant))
        await assert_accepted(http, rs256_with_kid(other_rsa_key, "rsa-2", tenant))
        es256 = signed(claims_for(tenant), private_pem(ec_key), "ES256", {"kid": "ec-1"})
        await assert_accepted(http, bearer(es256))
        # A kid names a key: a token signed by another key under that kid is refused.
        await assert_unauthorized(http, rs256_with_kid(other_rsa_key, "rsa-1", tenant))
        # An RSA key cannot verify a token claiming ES256, nor the reverse.
        await assert_unauthorized(http, rs256_with_kid(rsa_key, "ec-1", tenant))
        await assert_unauthorized(http, hs256(tenant))
    assert jwks_server.hits == 1


async def test_jwks_rotation_to_a_new_kid_is_picked_up(
    pg_url: str,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    tenant: str,
) -> None:
    monotonic = FakeMonotonic()
    cache = JwksCache(jwks_server.url, monotonic=monotonic)
    jwks_server.serve(jwk_of(rsa_key, "2024-01"))
    async with serving(jwks_settings(pg_url, jwks_server.url), jwks=cache) as http:
        await assert_accepted(http, rs256_with_kid(rsa_key, "2024-01", tenant))
        jwks_server.serve(jwk_of(other_rsa_key, "2024-02"))
        monotonic.advance(61)
        await assert_accepted(http, rs256_with_kid(other_rsa_key, "2024-02", tenant))
        assert (jwks_server.hits, cache.fetch_count) == (2, 2)
        # The retired key is gone with the document that no longer lists it.
        await assert_unauthorized(http, rs256_with_kid(rsa_key, "2024-01", tenant))


async def test_unknown_kid_refetches_the_jwks_at_most_once_a_minute(
    pg_url: str,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    tenant: str,
) -> None:
    monotonic = FakeMonotonic()
    cache = JwksCache(jwks_server.url, monotonic=monotonic)
    jwks_server.serve(jwk_of(rsa_key, "known"))
    async with serving(jwks_settings(pg_url, jwks_server.url), jwks=cache) as http:
        await assert_accepted(http, rs256_with_kid(rsa_key, "known", tenant))
        assert (jwks_server.hits, cache.fetch_count) == (1, 1)

        monotonic.advance(61)
        await assert_unauthorized(http, rs256_with_kid(other_rsa_key, "unknown-1", tenant))
        assert (jwks_server.hits, cache.fetch_count) == (2, 2)

        # The key server now has the key, but within the minute nobody asks it again.
        jwks_server.serve(jwk_of(rsa_key, "known"), jwk_of(other_rsa_key, "unknown-2"))
        monotonic.advance(30)
        await assert_unauthorized(http, rs256_with_kid(other_rsa_key, "unknown-2", tenant))
        await assert_unauthorized(http, rs256_with_kid(other_rsa_key, "unknown-3", tenant))
        assert (jwks_server.hits, cache.fetch_count) == (2, 2)
        # Known keys keep working meanwhile, from the cache.
        await assert_accepted(http, rs256_with_kid(rsa_key, "known", tenant))
        assert jwks_server.hits == 2

        monotonic.advance(31)
        await assert_accepted(http, rs256_with_kid(other_rsa_key, "unknown-2", tenant))
        assert (jwks_server.hits, cache.fetch_count) == (3, 3)


async def test_a_burst_of_unknown_kids_causes_one_refetch(
    pg_url: str,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    tenant: str,
) -> None:
    monotonic = FakeMonotonic()
    cache = JwksCache(jwks_server.url, monotonic=monotonic)
    jwks_server.serve(jwk_of(rsa_key, "known"))
    async with serving(jwks_settings(pg_url, jwks_server.url), jwks=cache) as http:
        await assert_accepted(http, rs256_with_kid(rsa_key, "known", tenant))
        monotonic.advance(61)
        responses = await asyncio.gather(
            *(
                http.get(
                    "/reward-points/summaryBatch",
                    headers=rs256_with_kid(other_rsa_key, f"burst-{n}", tenant),
                )
                for n in range(8)
            )
        )
        assert [(r.status_code, r.json()) for r in responses] == [(401, UNAUTHORIZED)] * 8
        assert (jwks_server.hits, cache.fetch_count) == (2, 2)


@pytest.mark.parametrize("header", ["jku", "x5u"])
async def test_key_url_inside_a_token_is_never_fetched(
    pg_url: str,
    jwks_server: JwksServer,
    attacker_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    tenant: str,
    header: str,
) -> None:
    jwks_server.serve(jwk_of(rsa_key, "legit"))
    attacker_server.serve(jwk_of(other_rsa_key, "evil"), jwk_of(other_rsa_key, "legit"))
    async with serving(jwks_settings(pg_url, jwks_server.url)) as http:
        for kid in ("evil", "legit"):
            forged = rs256_with_kid(other_rsa_key, kid, tenant, **{header: attacker_server.url})
            await assert_unauthorized(http, forged)
        # The genuine key still verifies, whatever URL a token names.
        genuine = rs256_with_kid(rsa_key, "legit", tenant, **{header: attacker_server.url})
        await assert_accepted(http, genuine)
    assert attacker_server.hits == 0
    assert jwks_server.hits >= 1


async def test_key_embedded_in_a_token_header_is_not_trusted(
    pg_url: str,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    tenant: str,
) -> None:
    jwks_server.serve(jwk_of(rsa_key, "legit"))
    async with serving(jwks_settings(pg_url, jwks_server.url)) as http:
        embedded = jwk_of(other_rsa_key, "legit")
        forged = rs256_with_kid(other_rsa_key, "legit", tenant, jwk=embedded)
        await assert_unauthorized(http, forged)


def assert_service_unavailable(response: httpx.Response, path: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert datetime.fromisoformat(body.pop("timestamp")).tzinfo is not None
    assert body == {"status": 503, "error": "Service Unavailable", "path": path}
    assert response.headers["retry-after"] == "1"


async def test_jwks_server_down_on_first_use_is_503(
    pg_url: str, rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    async with serving(jwks_settings(pg_url, url)) as http:
        response = await http.get(
            "/reward-points/summaryBatch", headers=rs256_with_kid(rsa_key, "k1", tenant)
        )
        assert_service_unavailable(response, "/summaryBatch")


async def test_jwks_server_failing_then_recovering_is_retried_at_once(
    pg_url: str, jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    monotonic = FakeMonotonic()
    cache = JwksCache(jwks_server.url, monotonic=monotonic)
    jwks_server.status = 500
    async with serving(jwks_settings(pg_url, jwks_server.url), jwks=cache) as http:
        headers = rs256_with_kid(rsa_key, "k1", tenant)
        response = await http.get("/reward-points/summaryBatch", headers=headers)
        assert_service_unavailable(response, "/summaryBatch")
        jwks_server.status = 200
        jwks_server.serve(jwk_of(rsa_key, "k1"))
        # No minute has passed, yet with no keys at all the next request asks again.
        await assert_accepted(http, headers)
        assert jwks_server.hits == 2


# ---- tokens printed by `rewardpoints token` --------------------------------------------------


async def test_mint_token_output_is_accepted(hs_client: httpx.AsyncClient, tenant: str) -> None:
    token = mint_token(TEST_SECRET, tenant=tenant, scopes=(VIEW, MANAGE))
    await assert_accepted(hs_client, bearer(token))


def _cli_token(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REWARDPOINTS_")}
    result = subprocess.run(
        [sys.executable, "-m", "rewardpoints", "token", *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_cli_token_is_accepted_by_an_app_with_the_same_settings(
    pg_url: str, tenant: str, tmp_path: Path
) -> None:
    env = {
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_JWT_ISSUER": ISSUER,
        "REWARDPOINTS_JWT_AUDIENCE": AUDIENCE,
    }
    token = await asyncio.to_thread(_cli_token, tmp_path, env, "--tenant", tenant)
    settings = make_settings(pg_url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    async with serving(settings) as http:
        await assert_accepted(http, bearer(token))
    # Signed with the configured secret, not some other one.
    async with serving(make_settings(pg_url, jwt_secret="a-different-secret-" + "y" * 32)) as http:
        await assert_unauthorized(http, bearer(token))
