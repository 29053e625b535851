"""Coupon issuing, pluggable: kept in our own database (built in), or created by an
Emporix-compatible Coupon Service (``POST {url}/coupon/{tenant}/coupons``).

Either way the coupon is the redeem option's template with a fresh code
(``<site codePrefix>-<6 digits>``), ``issuedTo`` the customer and ``maxRedemptions`` 1.
Issuing has two steps (rewards.py runs them from the outbox): ``issue``, outside any
transaction and safe to repeat with the same request, and ``keep``, inside the transaction
that settles the redemption. Either raises ``CouponIssueFailed`` when the coupon cannot be
issued; the points are then charged back in that same transaction. ``issue`` raises
``CouponIssueUncertain`` when it cannot tell whether the coupon was created: the redemption is
then left for the outbox to settle later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from .config import Settings, Site
from .db import database_clock
from .errors import CouponIssueFailed, CouponIssueUncertain
from .models import coupons

log = logging.getLogger("rewardpoints")

Digits = Callable[[], int]

CODE_SPACE = 1_000_000
# Read-only in Emporix's coupon model: never copied from a template into a new coupon.
READ_ONLY_FIELDS = frozenset(
    {"code", "status", "issuedTo", "redemptionCount", "links", "deleted", "legalEntityRedemptions"}
)
_BUILT_IN_ATTEMPTS = 20


def random_digits() -> int:
    return secrets.randbelow(CODE_SPACE)


@dataclass(frozen=True, slots=True)
class CouponRequest:
    tenant: str
    customer_id: str
    site: Site
    redeem_option_id: str
    template: dict[str, Any]
    redemption_id: str
    # The code tried first, drawn once per redemption: every run of the redemption's intent
    # tries the same code, so a coupon created by an earlier run is found again.
    code: str


def new_code(prefix: str, digits: int) -> str:
    return f"{prefix}-{digits:06d}"


def coupon_body(request: CouponRequest, code: str) -> dict[str, Any]:
    """The coupon to create: the template's fields, this code, for this customer, once."""
    body = {key: value for key, value in request.template.items() if key not in READ_ONLY_FIELDS}
    body["code"] = code
    body["issuedTo"] = request.customer_id
    body["maxRedemptions"] = 1
    return body


class CouponIssuer(Protocol):
    @property
    def keeps_coupons(self) -> bool:
        """Whether ``issued_to`` can list the coupons this issuer made."""
        ...

    def draw_code(self, site: Site) -> str:
        """A fresh code for a new redemption's coupon."""
        ...

    async def issue(self, request: CouponRequest, *, again: bool) -> str | None:
        """The step outside the database: create the coupon elsewhere and return its code,
        or None when ``keep`` creates it. ``again``: an earlier run may have created it."""
        ...

    async def keep(self, conn: AsyncConnection, request: CouponRequest, issued: str | None) -> str:
        """The step in the settling transaction; returns the coupon's code."""
        ...

    async def issued_to(
        self, conn: AsyncConnection, tenant: str, customer_id: str
    ) -> list[dict[str, Any]]: ...


def coupon_status(body: dict[str, Any], now: datetime) -> str:
    """INACTIVE before ``restrictions.validFrom``, EXPIRED after ``validUntil``, else VALID."""
    restrictions = body.get("restrictions")
    if isinstance(restrictions, dict):
        valid_from = _moment(restrictions.get("validFrom"))
        valid_until = _moment(restrictions.get("validUntil"))
        if valid_from is not None and now < valid_from:
            return "INACTIVE"
        if valid_until is not None and now > valid_until:
            return "EXPIRED"
    return "VALID"


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


class BuiltInCoupons:
    """Coupons kept in the ``coupons`` table; codes unique per tenant by its primary key."""

    keeps_coupons = True

    def __init__(
        self, *, digits: Digits = random_digits, attempts: int = _BUILT_IN_ATTEMPTS
    ) -> None:
        self.digits = digits
        self.attempts = attempts

    def draw_code(self, site: Site) -> str:
        return new_code(site.code_prefix, self.digits())

    async def issue(self, request: CouponRequest, *, again: bool) -> str | None:
        return None

    async def keep(self, conn: AsyncConnection, request: CouponRequest, issued: str | None) -> str:
        """Store the coupon under the request's code, or another drawn when it is taken."""
        code = request.code
        for _ in range(self.attempts):
            if await self._insert(conn, request, code):
                return code
            code = new_code(request.site.code_prefix, self.digits())
        raise CouponIssueFailed(
            f"no free coupon code with prefix '{request.site.code_prefix}' "
            f"after {self.attempts} attempts"
        )

    async def _insert(self, conn: AsyncConnection, request: CouponRequest, code: str) -> bool:
        body = json.dumps(coupon_body(request, code), ensure_ascii=False, separators=(",", ":"))
        # Only a taken code is tolerated; a second coupon for one redemption is an error.
        statement = (
            postgresql.insert(coupons)
            .values(
                tenant=request.tenant,
                code=code,
                customer_id=request.customer_id,
                redemption_id=request.redemption_id,
                redeem_option_id=request.redeem_option_id,
                site_code=request.site.code,
                body=body,
                created_at=database_clock(),
            )
            .on_conflict_do_nothing(index_elements=["tenant", "code"])
            .returning(coupons.c.code)
        )
        return (await conn.execute(statement)).first() is not None

    async def issued_to(
        self, conn: AsyncConnection, tenant: str, customer_id: str
    ) -> list[dict[str, Any]]:
        rows = await conn.execute(
            select(coupons.c.body, database_clock().label("now"))
            .where(coupons.c.tenant == tenant, coupons.c.customer_id == customer_id)
            .order_by(coupons.c.created_at, coupons.c.code)
        )
        issued = [(json.loads(row.body), row.now) for row in rows]
        return [
            {**body, "status": coupon_status(body, now), "redemptionCount": 0, "deleted": False}
            for body, now in issued
        ]


class EmporixCoupons:
    """Creates coupons through an Emporix-compatible Coupon Service.

    Each attempt has a timeout; timeouts, transport errors, 429 and 5xx answers are retried,
    with the same code, up to ``attempts`` times in all. Other 4xx answers fail at once. A 409
    ("duplicate coupon") is a taken code, unless an earlier attempt may have created the coupon
    without us hearing back: then the coupon is read, and if it is this customer's it is ours;
    so it is before a refusal, or giving up, is taken for the coupon not being created.
    When that read fails, the coupon may exist: ``CouponIssueUncertain``, so that it is neither
    charged back nor made again under another code, and the outbox looks again later.
    """

    keeps_coupons = False

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.05,
        digits: Digits = random_digits,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.digits = digits

    def _client(self) -> httpx.AsyncClient:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return httpx.AsyncClient(headers=headers, timeout=self.timeout)

    def _url(self, tenant: str, code: str | None = None) -> str:
        url = f"{self.base_url}/coupon/{quote(tenant, safe='')}/coupons"
        return f"{url}/{quote(code, safe='')}" if code is not None else url

    def draw_code(self, site: Site) -> str:
        return new_code(site.code_prefix, self.digits())

    async def keep(self, conn: AsyncConnection, request: CouponRequest, issued: str | None) -> str:
        assert issued is not None
        return issued

    async def issue(self, request: CouponRequest, *, again: bool) -> str | None:
        code = request.code
        # True once an attempt may have created the coupon although we got no success answer;
        # from the start when an earlier run of the same redemption may have.
        maybe_created = again
        problem = "no attempt made"
        async with self._client() as client:
            for attempt in range(1, self.attempts + 1):
                if attempt > 1:
                    await asyncio.sleep(self.backoff * (attempt - 1))
                try:
                    response = await client.post(
                        self._url(request.tenant), json=coupon_body(request, code)
                    )
                except httpx.HTTPError as error:
                    sent = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
                    maybe_created = maybe_created or sent
                    problem = f"{type(error).__name__} {error}".strip()
                    log.warning("coupon service attempt %d failed: %s", attempt, problem)
                    continue
                if response.is_success:
                    return _issued_code(response, code)
                status = response.status_code
                problem = f"HTTP {status}"
                log.warning("coupon service attempt %d answered %s", attempt, status)
                if status == 409:
                    ours = await self._own_code(client, request, code) if maybe_created else None
                    if ours is not None:
                        return ours
                    code = new_code(request.site.code_prefix, self.digits())
                    maybe_created = False
                    continue
                if status == 429 or status >= 500:
                    maybe_created = maybe_created or status >= 500
                    continue
                # Refused now; an earlier attempt may still have created it.
                ours = await self._own_code(client, request, code) if maybe_created else None
                if ours is not None:
                    return ours
                raise CouponIssueFailed(f"the coupon service refused the coupon: {problem}")
            ours = await self._own_code(client, request, code) if maybe_created else None
            if ours is not None:
                return ours
        raise CouponIssueFailed(
            f"the coupon service did not create the coupon in {self.attempts} attempt(s): {problem}"
        )

    async def _own_code(
        self, client: httpx.AsyncClient, request: CouponRequest, code: str
    ) -> str | None:
        """The saved code of coupon ``code`` if it exists and was issued to this customer; None
        if it does not exist or is another's. CouponIssueUncertain when the service cannot
        tell."""
        found: Any = None
        try:
            response = await client.get(self._url(request.tenant, code))
            if response.status_code == 404:
                return None
            problem = f"HTTP {response.status_code}"
            if response.status_code == 200:
                found = response.json()
        except (httpx.HTTPError, ValueError) as error:
            problem = f"{type(error).__name__} {error}".strip()
        if not isinstance(found, dict):
            raise CouponIssueUncertain(
                f"the coupon service could not tell whether coupon {code} exists: {problem}"
            )
        if found.get("issuedTo") != request.customer_id:
            return None
        saved = found.get("code")
        return saved if isinstance(saved, str) and saved else code

    async def issued_to(
        self, conn: AsyncConnection, tenant: str, customer_id: str
    ) -> list[dict[str, Any]]:
        raise NotImplementedError("the Coupon Service keeps these coupons")


def _issued_code(response: httpx.Response, sent: str) -> str:
    """The code the service saved (Emporix answers ``{"id": "<CODE>"}``, upper-cased)."""
    try:
        answer = response.json()
    except ValueError:
        return sent
    if isinstance(answer, dict):
        for key in ("id", "code"):
            value = answer.get(key)
            if isinstance(value, str) and value:
                return value
    return sent


def build_issuer(settings: Settings) -> CouponIssuer:
    if settings.coupon_service_url is None:
        return BuiltInCoupons()
    token = settings.coupon_service_token
    return EmporixCoupons(
        settings.coupon_service_url,
        token=token.get_secret_value() if token is not None else None,
        timeout=settings.coupon_service_timeout_seconds,
        attempts=settings.coupon_service_attempts,
    )
