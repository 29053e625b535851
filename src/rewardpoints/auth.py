"""Bearer JWTs: verification with pinned algorithms, and the principal a token stands for.

python-jose is used only inside ``TokenVerifier.verify`` and ``mint_token``, so the library can
be swapped without touching the rest of the service. None of its permissive defaults is relied
on: the algorithm list, ``exp``, and (when configured) ``iss``/``aud`` are always demanded, and
the time claims must be JSON numbers (``numeric_dates``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from jose import jwt
from jose.exceptions import JOSEError

from .config import Settings
from .errors import AuthenticationFailed, Forbidden, KeysUnavailable

VIEW_SCOPES = ("rewardspoints.rewardpoints_view", "saasag.rewardpoints_view")
MANAGE_SCOPES = ("rewardspoints.rewardpoints_manage", "saasag.rewardpoints_manage")

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{2,15}$")
# Path segments the router owns: a tenant of these names could never be addressed.
RESERVED_TENANTS = frozenset({"customer", "public"})
JWKS_MIN_REFRESH_SECONDS = 60.0
# The time claims: RFC 7519 NumericDate, a JSON number of seconds since the epoch.
TIME_CLAIMS = ("exp", "nbf", "iat")
# 9999-12-31T23:59:59Z: a later time is no date any clock reaches, only a token that never ends.
LATEST_NUMERIC_DATE = 253_402_300_799
VERIFIED_TOKENS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    customer_id: str | None = None
    subject: str | None = None

    @property
    def is_customer(self) -> bool:
        return self.customer_id is not None

    @property
    def actor(self) -> str | None:
        """Who a write is recorded as made by: the token's subject, else its customer."""
        return self.subject or self.customer_id

    def require_any(self, accepted: Iterable[str]) -> None:
        accepted = tuple(accepted)
        if self.scopes.isdisjoint(accepted):
            raise Forbidden(
                "Scope validation failed",
                [f"Missing required scopes '[{', '.join(accepted)}]'"],
            )


def is_valid_tenant(tenant: object) -> bool:
    return (
        isinstance(tenant, str)
        and TENANT_PATTERN.fullmatch(tenant) is not None
        and tenant not in RESERVED_TENANTS
    )


def numeric_dates(claims: dict[str, Any]) -> dict[str, float]:
    """The time claims present, each a JSON number (not a string, not a boolean, which
    Python counts as an int) and a date between 1970 and 9999; any other value refuses the
    token. python-jose only tries ``int()`` on them, which reads ``"1796650735"`` and ``true``."""
    dates: dict[str, float] = {}
    for claim in TIME_CLAIMS:
        if claim not in claims:
            continue
        value = claims[claim]
        # NaN and the infinities fail the comparison; an int past a float's range is only compared.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= LATEST_NUMERIC_DATE
        ):
            raise AuthenticationFailed(f"claim {claim} is not a NumericDate")
        dates[claim] = float(value)
    return dates


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    entries: list[str] = []
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            entries += value.split()
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            entries += value
        elif value is not None:
            raise AuthenticationFailed(f"claim {claim} has the wrong type")
    scope_tenants = [entry.split("=", 1)[1] for entry in entries if entry.startswith("tenant=")]
    tenant = claims.get("tenant")
    if tenant is None and scope_tenants:
        tenant = scope_tenants[0]
    if not is_valid_tenant(tenant):
        raise AuthenticationFailed("token names no valid tenant")
    assert isinstance(tenant, str)
    customer_id = claims.get("customerId")
    if customer_id is not None and (
        not isinstance(customer_id, str) or not 0 < len(customer_id) <= 255
    ):
        raise AuthenticationFailed("claim customerId is not a customer id")
    subject = claims.get("sub")
    return Principal(
        tenant=tenant,
        scopes=frozenset(entry for entry in entries if not entry.startswith("tenant=")),
        customer_id=customer_id,
        subject=subject if isinstance(subject, str) else None,
    )


class JwksCache:
    """Keys from a JWKS URL, by ``kid``; refetched at most once a minute for an unknown ``kid``."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = client
        self._monotonic = monotonic
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0
        # Bumped whenever the key set changes, so verified tokens are checked again.
        self.generation = 0

    async def key_for(self, kid: str | None) -> dict[str, Any] | None:
        key = self._lookup(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._lookup(kid)
            if key is None and self._may_refresh():
                await self._refresh()
                key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _may_refresh(self) -> bool:
        return (
            self._fetched_at is None
            or self._monotonic() - self._fetched_at >= JWKS_MIN_REFRESH_SECONDS
        )

    async def _refresh(self) -> None:
        self._fetched_at = self._monotonic()
        self.fetch_count += 1
        try:
            if self._client is not None:
                response = await self._client.get(self.url, timeout=5.0)
            else:
                async with httpx.AsyncClient() as client:
                    response = await client.get(self.url, timeout=5.0)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as error:
            if not self._keys:
                # Nothing to verify with yet: let the next request try again at once.
                self._fetched_at = None
            raise KeysUnavailable(f"cannot fetch JWKS: {error}") from error
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise KeysUnavailable("JWKS document has no keys")
        self._keys = {
            key.get("kid"): key
            for key in keys
            if isinstance(key, dict) and key.get("use", "sig") == "sig"
        }
        self.generation += 1


class TokenVerifier:
    def __init__(self, settings: Settings, *, jwks: JwksCache | None = None) -> None:
        self.algorithms = settings.algorithms
        self.secret = settings.signing_secret()
        self.public_key = settings.jwt_public_key
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_seconds
        self.jwks = jwks or (JwksCache(settings.jwt_jwks_url) if settings.jwt_jwks_url else None)
        # Tokens already verified, until they expire: a client sends the same token many times,
        # and verifying a signature costs more than the rest of a balance request.
        self._verified: dict[str, tuple[Principal, float, int]] = {}

    def known_principal(self, token: str) -> Principal | None:
        """The principal of a token verified before and still valid; None for any other."""
        cached = self._verified.get(token)
        if cached is None:
            return None
        principal, expires, seen_generation = cached
        generation = self.jwks.generation if self.jwks is not None else 0
        if time.time() <= expires + self.leeway and seen_generation == generation:
            return principal
        return None

    async def principal(self, token: str) -> Principal:
        known = self.known_principal(token)
        if known is not None:
            return known
        self._verified.pop(token, None)
        claims = await self.verify(token)
        principal = principal_from_claims(claims)
        generation = self.jwks.generation if self.jwks is not None else 0
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]), generation)
        return principal

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError as error:
            raise AuthenticationFailed("malformed token") from error
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise AuthenticationFailed("algorithm not accepted")
        key = await self._key_for(algorithm, header.get("kid"))
        options = {
            "require_exp": True,
            "verify_aud": self.audience is not None,
            "require_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
            "require_iss": self.issuer is not None,
            "verify_at_hash": False,
            "leeway": self.leeway,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options=options,
            )
        except (JOSEError, TypeError, ValueError, OverflowError) as error:
            # python-jose lets int() fail on exp/nbf/iat of the wrong type (null, a list, Infinity).
            raise AuthenticationFailed(str(error)) from error
        dates = numeric_dates(claims)
        now = time.time()
        if dates.get("iat", now) > now + self.leeway:
            raise AuthenticationFailed("token issued in the future")
        # python-jose checked exp and nbf against its own clock, in whole seconds; this one is
        # the clock the cache uses.
        if dates.get("nbf", now) > now + self.leeway:
            raise AuthenticationFailed("token not valid yet")
        if dates["exp"] < now - self.leeway:
            raise AuthenticationFailed("token expired")
        return claims

    async def _key_for(self, algorithm: str, kid: Any) -> Any:
        if algorithm.startswith("HS"):
            if self.secret is None:
                raise AuthenticationFailed("no secret for HMAC tokens")
            return self.secret
        if self.public_key is not None:
            return self.public_key
        if self.jwks is not None:
            key = await self.jwks.key_for(kid if isinstance(kid, str) else None)
            if key is not None:
                return key
        raise AuthenticationFailed("no key for this token")


def mint_token(
    secret: str,
    *,
    tenant: str,
    scopes: Iterable[str],
    customer_id: str | None = None,
    ttl_seconds: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    subject: str | None = None,
    algorithm: str = "HS256",
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject or customer_id or f"{tenant}-operator",
        "tenant": tenant,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if customer_id is not None:
        claims["customerId"] = customer_id
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    token: str = jwt.encode(claims, secret, algorithm=algorithm)
    return token
