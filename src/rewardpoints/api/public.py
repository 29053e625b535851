"""Signed-In Customer Reward Points: the storefront's endpoints, acting on the token's customer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from starlette.responses import Response

from ..documents import dumps, summary_document
from ..errors import CustomerNotFound, RewardPointsError
from ..idempotency import Replayed
from ..rewards import RedeemOutcome
from .deps import (
    DEFAULT_SITE_CODE,
    CustomerPrincipal,
    DocumentsDep,
    LedgerDep,
    RewardsDep,
    SiteCode,
)
from .errors import bad_gateway, instance_of, not_found, responses
from .idempotency import IdempotencyKey, claim_of, refused, replay
from .management import summary_response
from .schemas import (
    PointsSummaryOut,
    RedeemCouponOut,
    RedeemIn,
    RedeemOptionOut,
    redeem_option_json,
)

router = APIRouter(prefix="/reward-points/public", tags=["Signed-In Customer Reward Points"])


def _json(body: Any) -> Response:
    return Response(dumps(body), media_type="application/json")


@router.get(
    "/customer",
    operation_id="GET-reward-points-fetch-logged-customer-points",
    summary="Retrieving reward points of a signed-in customer",
    response_model=int,
    responses=responses(401, 403, 404, 500, 503),
)
async def get_own_balance(principal: CustomerPrincipal, ledger: LedgerDep) -> Response:
    """The signed-in customer's active points, as a bare JSON integer."""
    assert principal.customer_id is not None
    balance = await ledger.balance(principal.tenant, principal.customer_id)
    return Response(str(balance).encode(), media_type="application/json")


@router.get(
    "/customer/summary",
    operation_id="GET-reward-points-retrieve-logged-customer-reward-summary",
    summary="Retrieving a reward points summary of a signed-in customer",
    response_model=PointsSummaryOut,
    responses=responses(401, 403, 404, 500, 503),
)
async def get_own_summary(
    request: Request, principal: CustomerPrincipal, docs: DocumentsDep
) -> Response:
    """Every added and redeemed entry of the signed-in customer, oldest first."""
    assert principal.customer_id is not None
    parts = summary_document(docs, principal.tenant, principal.customer_id)
    return await summary_response(request, parts)


@router.get(
    "/customer/redeemOptions",
    operation_id="GET-reward-points-list-logged-customer-redeem-options",
    summary="Retrieving redemption options for a signed-in customer",
    response_model=list[RedeemOptionOut],
    responses=responses(401, 403, 500, 503),
)
async def get_own_redeem_options(principal: CustomerPrincipal, rewards: RewardsDep) -> Response:
    """The tenant's redeem options, each with `pointsAfterCoupon`: the customer's active points
    minus the option's points (negative when the customer cannot afford it). The path Emporix's
    own storefront calls; not in Emporix's OpenAPI document."""
    assert principal.customer_id is not None
    options, active = await rewards.options_for(principal.tenant, principal.customer_id)
    return _json([redeem_option_json(option, active) for option in options])


@router.post(
    "/customer/redeem",
    operation_id="POST-reward-points-redeem-logged-customer-reward-points-coupon",
    summary="Redeeming a logged-in customer's reward points for a coupon code",
    status_code=200,
    response_model=RedeemCouponOut,
    responses=responses(400, 401, 403, 404, 413, 422, 500, 502, 503),
)
async def redeem_for_coupon(
    request: Request,
    principal: CustomerPrincipal,
    rewards: RewardsDep,
    body: Annotated[RedeemIn, Body()],
    siteCode: SiteCode = DEFAULT_SITE_CODE,  # noqa: N803 - Emporix's parameter name
    _key: IdempotencyKey = None,
) -> Response:
    """Spend the option's points and answer the new coupon's code. If the coupon cannot be
    created the points are given back as a new entry and the answer is 502. With an
    `Idempotency-Key`, one request per key spends the points; a request with the same key
    while it is at work is answered 409, and afterwards the first answer is replayed."""
    customer_id = principal.customer_id
    assert customer_id is not None
    claim = await claim_of(request, principal.tenant, customer_id=customer_id)
    try:
        outcome = await rewards.redeem(
            principal.tenant, customer_id, body.id, siteCode, key=claim, path=instance_of(request)
        )
    except Replayed as replayed:
        return replay(replayed.stored)
    except RewardPointsError as error:
        return await refused(request, claim, error)
    return redeem_answer(outcome)


def redeem_answer(outcome: RedeemOutcome) -> Response:
    """The answer to a redemption for a coupon, the same in its first answer and in replays."""
    if outcome.code is not None:
        return _json({"code": outcome.code})
    if outcome.charged_back:
        message = (
            f"The coupon could not be created; the {outcome.points} redeemed points were given "
            "back as a new entry"
        )
        return bad_gateway(outcome.path, message, at=outcome.at)
    return not_found(str(CustomerNotFound(outcome.customer_id)))


@router.get(
    "/customer/coupons",
    operation_id="GET-reward-points-list-logged-customer-coupons",
    summary="Retrieving the coupons a signed-in customer got for points (extension)",
    response_model=list[dict[str, Any]],
    responses=responses(401, 403, 404, 500, 503),
)
async def get_own_coupons(principal: CustomerPrincipal, rewards: RewardsDep) -> Response:
    """Coupons issued to the signed-in customer by the built-in issuer, oldest first. Not part
    of Emporix's API; 404 when an external Coupon Service issues the coupons."""
    assert principal.customer_id is not None
    return _json(await rewards.coupons_of(principal.tenant, principal.customer_id))
