"""Points for completed orders: what Emporix does when an order reaches COMPLETED, as an
endpoint an order system (or a webhook relay) calls."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from starlette.responses import Response

from ..documents import dumps
from ..ledger import AwardedOrder
from .deps import DEFAULT_SITE_CODE, CustomerId, ManagePrincipal, RewardsDep, SiteCode
from .errors import responses
from .idempotency import IdempotencyKey, idempotent
from .schemas import OrderAwardOut, OrderIn, order_award_json

router = APIRouter(prefix="/reward-points", tags=["Reward Points Management"])


@router.post(
    "/customer/{customerId}/orders",
    operation_id="POST-reward-points-award-order-points",
    summary="Awarding reward points for an order (extension)",
    status_code=201,
    response_model=OrderAwardOut,
    responses={
        200: {"model": OrderAwardOut, "description": "Awarded before; nothing added now."},
        204: {"description": "Not completed, or the site's reward points are disabled."},
        **responses(400, 401, 403, 409, 413, 422, 500, 503),
    },
)
async def order_changed(
    request: Request,
    principal: ManagePrincipal,
    customer_id: CustomerId,
    rewards: RewardsDep,
    body: Annotated[OrderIn, Body()],
    siteCode: SiteCode = DEFAULT_SITE_CODE,  # noqa: N803 - Emporix's parameter name
    _key: IdempotencyKey = None,
) -> Response:
    """On `COMPLETED`, add floor(total.amount x the site's orderValueToRewardPointsFactor)
    points with `reference-id` = the order id, once per order id: 201 when added now, 200
    with the earlier award when the order was awarded before, 204 when nothing is due. The
    same order id for another customer is a 409."""

    def answer(award: AwardedOrder | None) -> Response:
        if award is None:
            return Response(status_code=204)
        return Response(
            dumps(order_award_json(award)),
            status_code=201 if award.created else 200,
            media_type="application/json",
        )

    return await idempotent(
        request,
        principal.tenant,
        lambda: rewards.order_changed(
            principal.tenant, customer_id, body.to_order(), siteCode, actor=principal.actor
        ),
        answer,
    )
