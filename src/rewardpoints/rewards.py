"""What a signed-in customer does with points (redeem options, coupons), and points for orders.

Built on the ledger: a redemption is ``Ledger.redeem_points``, a failed coupon is given back
with ``Ledger.charge_back``, an order's points are ``Ledger.award_order``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .config import MAX_POINTS, Settings, Site
from .coupons import CouponIssuer, CouponRequest, build_issuer
from .db import read_transaction, run_transaction
from .errors import (
    CouponIssueFailed,
    CustomerNotFound,
    InvalidRequest,
    ResourceNotFound,
    RewardPointsDisabled,
    Unavailable,
)
from .idempotency import IdempotencyStore, KeyClaim, StoredResponse
from .ledger import AwardedOrder, Ledger, NewRedemption
from .metrics import POINTS
from .outbox import Intent, Outbox
from .redeem_options import RedeemOption, RedeemOptionStore

log = logging.getLogger("rewardpoints")

COMPLETED = "COMPLETED"
# The outbox's kind of a redemption's coupon to issue (or points to charge back).
COUPON_INTENT = "coupon"


def order_description(order_id: str) -> str:
    # Emporix writes "Bonuspunkte für Bestellung <orderId>"; this is its English form.
    return f"Bonus points for order {order_id}"


def order_points(amount: Decimal, factor: float) -> int:
    """floor(amount x factor), in decimal arithmetic: 2.3 x 100 is 230, not 229."""
    return int((amount * Decimal(repr(factor))).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    amount: Decimal
    currency: str
    status: str


@dataclass(frozen=True, slots=True)
class RedeemOutcome:
    """How a redemption for a coupon ended: its coupon's ``code``; or no coupon and its points
    ``charged_back`` as a new lot; or neither, the customer having been deleted first."""

    customer_id: str
    points: int
    # The request's path and the moment it was settled: the answer's body holds both, the
    # same in the first answer and in every replay.
    path: str
    at: str
    code: str | None = None
    charged_back: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "customer": self.customer_id,
            "points": self.points,
            "path": self.path,
            "at": self.at,
            "code": self.code,
            "chargedBack": self.charged_back,
        }

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> RedeemOutcome:
        return cls(
            data["customer"],
            int(data["points"]),
            data["path"],
            data["at"],
            data["code"],
            bool(data["chargedBack"]),
        )


# The answer to a redemption's request, as stored for its Idempotency-Key (api/public.py).
AnswerOf = Callable[[RedeemOutcome], StoredResponse]


class Rewards:
    def __init__(
        self,
        ledger: Ledger,
        redeem_options: RedeemOptionStore,
        issuer: CouponIssuer,
        outbox: Outbox,
        idempotency: IdempotencyStore,
        answer_of: AnswerOf,
    ) -> None:
        self.ledger = ledger
        self.redeem_options = redeem_options
        self.issuer = issuer
        self.outbox = outbox
        self.idempotency = idempotency
        self.answer_of = answer_of
        # A request waits this long for its own redemption to be settled, well inside the
        # intent's lease: after it, the outbox settles it and the request answers 503.
        self.settle_timeout = outbox.lease.total_seconds() / 2
        outbox.handle(COUPON_INTENT, self.settle)

    async def options_for(self, tenant: str, customer_id: str) -> tuple[list[RedeemOption], int]:
        """The tenant's options and the customer's active points (0 without an entry)."""
        options = await self.redeem_options.for_tenant(tenant)
        try:
            active = await self.ledger.balance(tenant, customer_id)
        except CustomerNotFound:
            active = 0
        return options, active

    async def redeem(
        self,
        tenant: str,
        customer_id: str,
        option_id: str,
        site_code: str,
        *,
        key: KeyClaim | None,
        path: str,
    ) -> RedeemOutcome:
        """Spend the option's points for its coupon (``spend``), then settle it (``settle``):
        exactly one of a coupon issued to the customer or the points charged back as a new
        lot. If this process dies or the database fails in between, the outbox runner of any
        process settles it once the intent's lease has run out."""
        intent = await self.spend(tenant, customer_id, option_id, site_code, key=key, path=path)
        # Shielded: a request that is cancelled or gives up waiting leaves it running.
        settling = asyncio.ensure_future(self.settle(intent))
        try:
            async with asyncio.timeout(self.settle_timeout):
                return await asyncio.shield(settling)
        except TimeoutError:
            raise Unavailable("the coupon is still being issued") from None

    async def spend(
        self,
        tenant: str,
        customer_id: str,
        option_id: str,
        site_code: str,
        *,
        key: KeyClaim | None,
        path: str,
    ) -> Intent:
        """One transaction: claim the Idempotency-Key, spend the option's points and record
        the intent to issue its coupon, leased to this process."""
        site = self.ledger.site(site_code)
        if not site.enabled:
            raise RewardPointsDisabled(site_code)
        option = await self.redeem_options.get(tenant, option_id)
        if option.coupon is None:
            raise InvalidRequest(f"Redeem option {option_id} has no coupon template", field="id")
        payload: dict[str, Any] = {
            "customer": customer_id,
            "site": site.code,
            "prefix": site.code_prefix,
            "option": option.id,
            "template": option.coupon,
            "points": option.points,
            "code": self.issuer.draw_code(site),
            "path": path,
            "key": [key.key, key.request_hash] if key is not None else None,
        }
        redemption = NewRedemption(option.points, description=option.description or option.name)

        async def spend(conn: AsyncConnection) -> Intent:
            if key is not None:
                await self.idempotency.claim_pending(conn, key)
            payload["redemption"] = await self.ledger.redeem_points_in(
                conn, tenant, customer_id, redemption, actor=customer_id
            )
            return await self.outbox.add(conn, tenant, COUPON_INTENT, payload)

        intent: Intent = await run_transaction(self.ledger.engine, spend)
        POINTS.labels("redeemed").inc(option.points)
        return intent

    async def settle(self, intent: Intent) -> RedeemOutcome:
        """Issue the coupon of a redemption's intent, or charge its points back; and record
        the answer for its Idempotency-Key. Run by the request, and by the outbox runner when
        the request could not finish it; safe to run again and at once in several processes."""
        payload = intent.payload
        request = CouponRequest(
            tenant=intent.tenant,
            customer_id=payload["customer"],
            site=self._site_of(payload),
            redeem_option_id=payload["option"],
            template=payload["template"],
            redemption_id=payload["redemption"],
            code=payload["code"],
        )
        issued: str | None = None
        problem: CouponIssueFailed | None = None
        try:
            issued = await self.issuer.issue(request, again=intent.attempts > 1)
        except CouponIssueFailed as error:
            problem = error

        async def complete(conn: AsyncConnection) -> RedeemOutcome | None:
            if not await self.outbox.settle(conn, intent):
                return None
            outcome = await self._settle_in(
                conn, request, int(payload["points"]), payload["path"], issued, problem
            )
            await self.outbox.done(conn, intent, outcome.to_json())
            if payload["key"] is not None:
                key, request_hash = payload["key"]
                claim = KeyClaim(intent.tenant, key, request_hash)
                await self.idempotency.answer(conn, claim, self.answer_of(outcome))
            return outcome

        outcome = await run_transaction(self.ledger.engine, complete)
        if outcome is not None and outcome.charged_back:
            POINTS.labels("charged_back").inc(outcome.points)
        if outcome is None:
            # Settled by another run of the same intent: its outcome is the answer.
            stored = await self.outbox.outcome(intent)
            assert stored is not None
            return RedeemOutcome.of_json(stored)
        return outcome

    def _site_of(self, payload: dict[str, Any]) -> Site:
        """The redemption's site as configured when its points were spent: a site gone from
        the configuration since does not keep its redemptions from being settled."""
        code = payload["site"]
        if "prefix" in payload:
            return Site(code, code_prefix=payload["prefix"])
        # Recorded before intents held the site's prefix.
        return self.ledger.sites.get(code) or Site(code)

    async def _settle_in(
        self,
        conn: AsyncConnection,
        request: CouponRequest,
        points: int,
        path: str,
        issued: str | None,
        problem: CouponIssueFailed | None,
    ) -> RedeemOutcome:
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        outcome = partial(RedeemOutcome, request.customer_id, points, path, at)
        if not await self.ledger.lock_redemption(
            conn, request.tenant, request.customer_id, request.redemption_id
        ):
            # Deleted since the points were spent: they went with the customer, who is not
            # brought back by a chargeback, nor is an entry made for the customer since given
            # a coupon or points for them; answered as if the delete came first.
            log.warning(
                "customer %s was deleted before redemption %s was settled",
                request.customer_id,
                request.redemption_id,
            )
            return outcome(code=issued)
        if problem is None:
            try:
                return outcome(code=await self.issuer.keep(conn, request, issued))
            except CouponIssueFailed as error:
                problem = error
        log.warning(
            "coupon for redemption %s of customer %s not issued (%s); charging back %d points",
            request.redemption_id,
            request.customer_id,
            problem,
            points,
        )
        await self.ledger.charge_back(
            conn, request.tenant, request.customer_id, points, actor=request.customer_id
        )
        return outcome(charged_back=True)

    async def coupons_of(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        if not self.issuer.keeps_coupons:
            raise ResourceNotFound(
                "Coupons are issued by the configured Coupon Service; list them there"
            )
        async with read_transaction(self.ledger.engine) as conn:
            return await self.issuer.issued_to(conn, tenant, customer_id)

    async def order_changed(
        self,
        tenant: str,
        customer_id: str,
        order: Order,
        site_code: str,
        *,
        actor: str | None = None,
    ) -> AwardedOrder | None:
        """Award a completed order's points once; None when nothing is to be awarded (the
        order is not completed, or the site's reward points are disabled)."""
        site = self.ledger.site(site_code)
        if order.status != COMPLETED or not site.enabled:
            return None
        # A negative factor is a misconfiguration; it never takes points away.
        points = max(order_points(order.amount, site.order_value_to_reward_points_factor), 0)
        if points > MAX_POINTS:
            raise InvalidRequest(
                f"The order would award {points} points, more than {MAX_POINTS}",
                field="total.amount",
            )
        return await self.ledger.award_order(
            tenant,
            customer_id,
            order.order_id,
            points,
            order_description(order.order_id),
            site_code,
            actor=actor,
        )


def build_rewards(
    settings: Settings,
    ledger: Ledger,
    outbox: Outbox,
    idempotency: IdempotencyStore,
    answer_of: AnswerOf,
) -> Rewards:
    store = RedeemOptionStore(ledger.engine)
    issuer = build_issuer(settings)
    return Rewards(ledger, store, issuer, outbox, idempotency, answer_of)
