"""What a signed-in customer does with points (redeem options, coupons), and points for orders.

Built on the ledger: a redemption is ``Ledger.redeem_points``, a failed coupon is given back
with ``Ledger.charge_back``, an order's points are ``Ledger.award_order``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from .config import MAX_POINTS, Settings
from .coupons import CouponIssuer, CouponRequest, build_issuer
from .errors import (
    CouponIssueFailed,
    CustomerNotFound,
    InvalidRequest,
    ResourceNotFound,
    RewardPointsDisabled,
)
from .ledger import AwardedOrder, Ledger, NewRedemption
from .redeem_options import RedeemOption, RedeemOptionStore

log = logging.getLogger("rewardpoints")

COMPLETED = "COMPLETED"


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


class Rewards:
    def __init__(
        self, ledger: Ledger, redeem_options: RedeemOptionStore, issuer: CouponIssuer
    ) -> None:
        self.ledger = ledger
        self.redeem_options = redeem_options
        self.issuer = issuer

    async def options_for(self, tenant: str, customer_id: str) -> tuple[list[RedeemOption], int]:
        """The tenant's options and the customer's active points (0 without an entry)."""
        options = await self.redeem_options.for_tenant(tenant)
        try:
            active = await self.ledger.balance(tenant, customer_id)
        except CustomerNotFound:
            active = 0
        return options, active

    async def redeem(self, tenant: str, customer_id: str, option_id: str, site_code: str) -> str:
        """Spend the option's points and issue its coupon; returns the coupon code.

        If the coupon cannot be issued the points come back as a new lot (the redemption
        stays) and CouponIssueFailed is raised.
        """
        site = self.ledger.site(site_code)
        if not site.enabled:
            raise RewardPointsDisabled(site_code)
        option = await self.redeem_options.get(tenant, option_id)
        if option.coupon is None:
            raise InvalidRequest(f"Redeem option {option_id} has no coupon template", field="id")
        redemption_id = await self.ledger.redeem_points(
            tenant,
            customer_id,
            NewRedemption(option.points, description=option.description or option.name),
        )
        request = CouponRequest(
            tenant=tenant,
            customer_id=customer_id,
            site=site,
            redeem_option_id=option.id,
            template=option.coupon,
            redemption_id=redemption_id,
        )
        # Shielded: once points are spent, a cancelled request must still end in a coupon or
        # in the chargeback.
        return await asyncio.shield(self._issue_or_charge_back(request, option.points))

    async def _issue_or_charge_back(self, request: CouponRequest, points: int) -> str:
        try:
            return await self.issuer.issue(request)
        except CouponIssueFailed as error:
            log.warning(
                "coupon for redemption %s of customer %s not issued (%s); charging back %d points",
                request.redemption_id,
                request.customer_id,
                error,
                points,
            )
            try:
                await self.ledger.charge_back(
                    request.tenant, request.customer_id, points, request.site.code
                )
            except CustomerNotFound:
                # Deleted since the points were spent: they went with the customer, who is
                # not brought back by the chargeback; answered as if the delete came first.
                log.warning(
                    "customer %s was deleted before the chargeback of redemption %s",
                    request.customer_id,
                    request.redemption_id,
                )
                raise
            raise CouponIssueFailed(
                f"The coupon could not be created; the {points} redeemed points were given back "
                "as a new entry"
            ) from error

    async def coupons_of(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        if not self.issuer.keeps_coupons:
            raise ResourceNotFound(
                "Coupons are issued by the configured Coupon Service; list them there"
            )
        return await self.issuer.issued_to(tenant, customer_id)

    async def order_changed(
        self, tenant: str, customer_id: str, order: Order, site_code: str
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
        )


def build_rewards(settings: Settings, ledger: Ledger) -> Rewards:
    store = RedeemOptionStore(ledger.engine)
    issuer = build_issuer(settings, ledger.engine)
    return Rewards(ledger, store, issuer)
