"""Operations beyond Emporix's API: reversals, deductions, history, balances in time, expiring
points and the liability report. Each under a Swagger tag of its own; writes need the manage
scope, reads the view scope, as Emporix's endpoints do."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from .. import reports
from ..documents import dumps
from ..errors import InvalidRequest
from ..ledger import Deduction, Preview, Reversal
from ..reports import HISTORY_KINDS, ExpiringCustomer, HistoryCursor
from .deps import (
    DEFAULT_SITE_CODE,
    CustomerId,
    LedgerDep,
    ManagePrincipal,
    SiteCode,
    ViewPrincipal,
)
from .errors import json_response, responses
from .extension_schemas import (
    DRY_RUN_ANSWER,
    BalanceAtOut,
    DeductionIn,
    DeductionOut,
    DryRun,
    ExpiringCustomerOut,
    ExpiringPointsOut,
    HistoryOut,
    LiabilityOut,
    ReversalIn,
    ReversalOut,
    deduction_json,
    expiring_customer_json,
    expiring_points_json,
    history_json,
    liability_json,
    preview_json,
    reversal_json,
    wire_time,
)
from .idempotency import IdempotencyKey, idempotent
from .schemas import Timestamp
from .streaming import StreamedResponse

router = APIRouter(prefix="/reward-points")

_FLUSH_BYTES = 64 * 1024


def _previewed(preview: Reversal | Deduction | Preview) -> Response:
    assert isinstance(preview, Preview)
    return json_response(200, preview_json(preview))


@router.post(
    "/customer/{customerId}/reversePoints",
    tags=["Reversals"],
    operation_id="POST-reward-points-reverse-customer-points",
    summary="Reversing a redemption of a customer",
    status_code=201,
    response_model=ReversalOut,
    responses={200: DRY_RUN_ANSWER, **responses(400, 401, 403, 404, 409, 413, 422, 500, 503)},
)
async def reverse_points(
    request: Request,
    principal: ManagePrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    body: Annotated[ReversalIn, Body()],
    dryRun: DryRun = False,  # noqa: N803
    _key: IdempotencyKey = None,
) -> Response:
    """Give `points` of the redemption `redemptionId` (default: all it still holds) back to
    the lots it drew from, newest lot first: their `usedPoints` go down, and the redemption
    leaves a lot's `usedWith` once it holds nothing of it. A lot expired meanwhile takes its
    share back expired (`expiredPoints`); the rest counts again (`restoredPoints`). Reversals
    of a redemption never add up to more than it spent (400); an unknown redemption is a 404."""
    reversal = body.to_reversal()
    if dryRun:
        return _previewed(
            await ledger.reverse_points(principal.tenant, customer_id, reversal, dry_run=True)
        )

    def answer(result: Reversal | Preview) -> Response:
        assert isinstance(result, Reversal)
        return json_response(201, reversal_json(result))

    return await idempotent(
        request,
        principal.tenant,
        lambda: ledger.reverse_points(
            principal.tenant, customer_id, reversal, actor=principal.actor
        ),
        answer,
    )


@router.post(
    "/customer/{customerId}/deductPoints",
    tags=["Deductions"],
    operation_id="POST-reward-points-deduct-customer-points",
    summary="Deducting reward points of a customer",
    status_code=201,
    response_model=DeductionOut,
    responses={200: DRY_RUN_ANSWER, **responses(400, 401, 403, 404, 409, 413, 422, 500, 503)},
)
async def deduct_points(
    request: Request,
    principal: ManagePrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    body: Annotated[DeductionIn, Body()],
    siteCode: SiteCode = DEFAULT_SITE_CODE,  # noqa: N803
    dryRun: DryRun = False,  # noqa: N803
    _key: IdempotencyKey = None,
) -> Response:
    """Take `points` back, e.g. for returned goods: from the lot `lotId` first, then oldest
    first. Beyond the balance it is refused (400) unless the site allows a negative balance:
    the shortfall is then owed, and the next additions pay it first. Emporix's summary lists
    a deduction among the redemptions."""
    deduction = body.to_deduction()
    if dryRun:
        return _previewed(
            await ledger.deduct_points(
                principal.tenant, customer_id, deduction, siteCode, dry_run=True
            )
        )

    def answer(result: Deduction | Preview) -> Response:
        assert isinstance(result, Deduction)
        return json_response(201, deduction_json(result))

    return await idempotent(
        request,
        principal.tenant,
        lambda: ledger.deduct_points(
            principal.tenant, customer_id, deduction, siteCode, actor=principal.actor
        ),
        answer,
    )


def _kinds(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    kinds = [kind.strip() for value in values for kind in value.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(HISTORY_KINDS))
    if unknown:
        raise InvalidRequest(
            f"kind must be among {', '.join(HISTORY_KINDS)}; not {', '.join(unknown)}",
            field="kind",
        )
    return kinds or None


@router.get(
    "/customer/{customerId}/history",
    tags=["History"],
    operation_id="GET-reward-points-customer-history",
    summary="Retrieving the history of a customer's reward points",
    response_model=HistoryOut,
    responses=responses(400, 401, 403, 404, 500, 503),
)
async def history(
    request: Request,
    principal: ViewPrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=1024, description="The `next` of the page before.")
    ] = None,
    kind: Annotated[
        list[str] | None,
        Query(description="Only these kinds (repeated, or comma-separated)."),
    ] = None,
    since: Annotated[
        Timestamp | None, Query(alias="from", description="Entries at or after this instant.")
    ] = None,
    until: Annotated[
        Timestamp | None, Query(alias="to", description="Entries before this instant.")
    ] = None,
) -> Response:
    """Every entry of the customer, newest first: added, chargeback, redeemed, reversed,
    deducted, and expired (what a lot had left at its `validUntil`, dated then), each with
    the balance after it, who made it (`actor`) and why (`reason`)."""
    at = HistoryCursor.decode(cursor) if cursor is not None else None
    kinds = _kinds(kind)
    page, source = await request.app.state.heavy_reads.run(
        lambda engine: reports.history(
            engine,
            principal.tenant,
            customer_id,
            limit=limit,
            cursor=at,
            kinds=kinds,
            since=since,
            until=until,
        )
    )
    return json_response(200, history_json(page), source.headers())


@router.get(
    "/customer/{customerId}/balance",
    tags=["Balance in time"],
    operation_id="GET-reward-points-customer-balance-at",
    summary="Retrieving the reward points of a customer at an instant",
    response_model=BalanceAtOut,
    responses=responses(400, 401, 403, 404, 500, 503),
)
async def balance_at(
    principal: ViewPrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    at: Annotated[Timestamp | None, Query(description="The instant; default now.")] = None,
) -> Response:
    """The customer's active points as they stood at `at`: the lots created by then and not
    expired then, less what was redeemed or deducted by then, plus what was reversed by then."""
    balance, moment = await reports.balance_at(ledger.engine, principal.tenant, customer_id, at)
    body = {"customerId": customer_id, "activePoints": balance, "at": wire_time(moment)}
    return json_response(200, body)


@router.get(
    "/customer/{customerId}/expiringPoints",
    tags=["Expiring points"],
    operation_id="GET-reward-points-customer-expiring-points",
    summary="Retrieving the reward points of a customer that expire soon",
    response_model=ExpiringPointsOut,
    responses=responses(400, 401, 403, 404, 500, 503),
)
async def customer_expiring_points(
    principal: ViewPrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    before: Annotated[Timestamp, Query(description="Points expiring before this instant.")],
) -> Response:
    """The customer's lots with points left that expire before `before`, soonest first, and
    their total."""
    lots = await reports.expiring_lots(ledger.engine, principal.tenant, customer_id, before)
    return json_response(200, expiring_points_json(customer_id, before, lots))


@router.get(
    "/expiringPoints",
    tags=["Expiring points"],
    operation_id="GET-reward-points-expiring-points",
    summary="Retrieving every customer whose reward points expire soon",
    response_model=list[ExpiringCustomerOut],
    responses=responses(400, 401, 403, 500, 503),
)
async def expiring_points(
    request: Request,
    principal: ViewPrincipal,
    ledger: LedgerDep,
    before: Annotated[Timestamp, Query(description="Points expiring before this instant.")],
) -> Response:
    """Every customer of the tenant with points expiring before `before`, ordered by
    `customerId`, with their total and the earliest `validUntil`: streamed as it is read."""
    customers, first, source = await request.app.state.heavy_reads.stream(
        lambda engine: reports.expiring_customers(engine, principal.tenant, before)
    )
    timeout = request.app.state.settings.stream_send_timeout_seconds
    response = StreamedResponse(
        _json_array(first, customers), send_timeout=timeout, owns=[customers]
    )
    response.headers.update(source.headers())
    return response


async def _json_array(
    first: ExpiringCustomer | None, rest: AsyncGenerator[ExpiringCustomer, None]
) -> AsyncIterator[bytes]:
    if first is None:
        yield b"[]"
        return
    buffer = bytearray(b"[")
    buffer += dumps(expiring_customer_json(first))
    async for customer in rest:
        buffer += b","
        buffer += dumps(expiring_customer_json(customer))
        if len(buffer) >= _FLUSH_BYTES:
            yield bytes(buffer)
            buffer.clear()
    buffer += b"]"
    yield bytes(buffer)


@router.get(
    "/liability",
    tags=["Liability"],
    operation_id="GET-reward-points-liability",
    summary="Retrieving the tenant's reward points liability",
    response_model=LiabilityOut,
    responses=responses(400, 401, 403, 500, 503),
)
async def liability(
    request: Request,
    principal: ViewPrincipal,
    ledger: LedgerDep,
    months: Annotated[int, Query(ge=1, le=120, description="Months ahead and behind.")] = 12,
) -> Response:
    """Points outstanding now and the customers holding them (and owed, by customers in
    debt); the points that will expire in each of the next `months` months (this one first);
    and for this month and each of the `months` - 1 before it, the points issued (added and
    charged back), redeemed, reversed, deducted and expired. The sums of the customers'
    histories."""
    figures, source = await request.app.state.heavy_reads.run(
        lambda engine: reports.liability(engine, principal.tenant, months)
    )
    return json_response(200, liability_json(figures), source.headers())
