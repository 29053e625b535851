"""Reward Points Management: the employee endpoints of Emporix's API."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Request
from starlette.responses import Response

from ..documents import Part, summary_document, summary_documents
from ..errors import InvalidRequest
from .deps import (
    DEFAULT_SITE_CODE,
    CustomerId,
    DocumentsDep,
    LedgerDep,
    ManagePrincipal,
    SiteCode,
    ViewPrincipal,
)
from .errors import json_response, responses
from .extension_schemas import DRY_RUN_ANSWER, DryRun, preview_json
from .idempotency import IdempotencyKey, idempotent
from .schemas import (
    AddedPointsIn,
    NewCustomerIn,
    PointsSummaryOut,
    RedeemedPointsIn,
)
from .streaming import StreamedResponse

router = APIRouter(prefix="/reward-points", tags=["Reward Points Management"])

_BATCH_FLUSH_BYTES = 64 * 1024


def _empty(status: int) -> Response:
    return Response(status_code=status)


def _integer(value: int) -> Response:
    return Response(str(value).encode(), media_type="application/json")


@router.get(
    "/summaryBatch",
    operation_id="GET-reward-points-retrieve-rewards-summary",
    summary="Retrieving reward points of all customers",
    response_model=list[PointsSummaryOut],
    responses=responses(401, 403, 500, 503),
)
async def summary_batch(request: Request, principal: ViewPrincipal, docs: DocumentsDep) -> Response:
    """Every customer of the token's tenant, ordered by `customerId`, streamed as it is read."""
    heavy_reads = request.app.state.heavy_reads
    documents, first, source = await heavy_reads.stream(
        lambda engine: summary_documents(docs, principal.tenant, engine)
    )
    response = _streamed(request, _json_array(first, documents), documents)
    response.headers.update(source.headers())
    return response


def _streamed(
    request: Request, content: AsyncIterator[Part], source: AsyncGenerator[Part, None]
) -> StreamedResponse:
    """``content`` read from ``source``, a started generator that the response closes."""
    timeout = request.app.state.settings.stream_send_timeout_seconds
    return StreamedResponse(content, send_timeout=timeout, owns=[source])


async def _json_array(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        yield b"[]"
        return
    # Joined once per part sent: the documents come in runs of ~100 KB or more.
    parts = [b"[", first]
    size = len(first)
    async for document in rest:
        parts += (b",", document)
        size += len(document)
        if size >= _BATCH_FLUSH_BYTES:
            yield b"".join(parts)
            parts.clear()
            size = 0
    parts.append(b"]")
    yield b"".join(parts)


async def summary_response(request: Request, parts: AsyncGenerator[Part, None]) -> Response:
    """A customer's summary: one response when it came whole, else streamed as it is read.

    The first parts are read before answering, so a missing customer is a 404 and an
    unreachable database a 503, not a broken 200."""
    try:
        first = await anext(parts)
        second = await anext(parts, None)
    except BaseException:
        await parts.aclose()
        raise
    if second is None:
        return Response(bytes(first), media_type="application/json")
    return _streamed(request, _parts(bytes(first) + second, parts), parts)


async def _parts(first: Part, rest: AsyncIterator[Part]) -> AsyncIterator[Part]:
    yield first
    async for part in rest:
        yield part


@router.get(
    "/customer/{customerId}",
    operation_id="GET-reward-points-fetch-customer-reward-points",
    summary="Retrieving reward points of a customer",
    response_model=int,
    responses=responses(400, 401, 403, 404, 500, 503),
)
async def get_balance(
    principal: ViewPrincipal, customer_id: CustomerId, ledger: LedgerDep
) -> Response:
    """The customer's active points, as a bare JSON integer."""
    return _integer(await ledger.balance(principal.tenant, customer_id))


@router.post(
    "/customer/{customerId}",
    operation_id="POST-reward-points-create-customer-reward-entry",
    summary="Creating a new reward points entry for a customer",
    status_code=200,
    response_class=Response,
    responses={
        200: {"description": "Created; no content."},
        **responses(400, 401, 403, 409, 422, 500, 503),
    },
)
async def create_entry(
    request: Request,
    principal: ManagePrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    body: Annotated[NewCustomerIn | None, Body()] = None,
    siteCode: SiteCode = DEFAULT_SITE_CODE,  # noqa: N803
    _key: IdempotencyKey = None,
) -> Response:
    """Create the customer's entry, optionally with `startPoints`; 409 if it exists."""
    if body is not None and body.customerId is not None and body.customerId != customer_id:
        raise InvalidRequest("customerId in the body differs from the path", field="customerId")
    start = body.startPoints.to_lot() if body is not None and body.startPoints else None
    return await idempotent(
        request,
        principal.tenant,
        lambda: ledger.create_customer(
            principal.tenant, customer_id, start, siteCode, actor=principal.actor
        ),
        lambda _: _empty(200),
    )


@router.delete(
    "/customer/{customerId}",
    operation_id="DELETE-reward-points-remove-customer-reward-entry",
    summary="Deleting reward points of a customer",
    status_code=200,
    response_class=Response,
    responses={200: {"description": "Deleted; no content."}, **responses(401, 403, 404, 500, 503)},
)
async def delete_entry(
    principal: ManagePrincipal, customer_id: CustomerId, ledger: LedgerDep
) -> Response:
    """Erase the customer's entry with all its lots and redemptions."""
    await ledger.delete_customer(principal.tenant, customer_id)
    return _empty(200)


@router.get(
    "/customer/{customerId}/summary",
    operation_id="GET-reward-points-retrieve-customer-reward-summary",
    summary="Retrieving a reward points summary for a single customer",
    response_model=PointsSummaryOut,
    responses=responses(400, 401, 403, 404, 500, 503),
)
async def get_summary(
    request: Request, principal: ViewPrincipal, customer_id: CustomerId, docs: DocumentsDep
) -> Response:
    """Every added and redeemed entry of the customer, oldest first, and the active points."""
    parts = summary_document(docs, principal.tenant, customer_id)
    return await summary_response(request, parts)


@router.post(
    "/customer/{customerId}/addPoints",
    operation_id="POST-reward-points-add-customer-reward-points",
    summary="Adding reward points for a customer",
    status_code=201,
    response_class=Response,
    responses={
        201: {"description": "Added; no content."},
        200: DRY_RUN_ANSWER,
        **responses(400, 401, 403, 409, 413, 422, 500, 503),
    },
)
async def add_points(
    request: Request,
    principal: ManagePrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    body: Annotated[AddedPointsIn, Body()],
    siteCode: SiteCode = DEFAULT_SITE_CODE,  # noqa: N803
    dryRun: DryRun = False,  # noqa: N803
    _key: IdempotencyKey = None,
) -> Response:
    """Credit a lot; the customer's entry is created when missing."""
    if dryRun:
        preview = await ledger.preview_add(principal.tenant, customer_id, body.to_lot(), siteCode)
        return json_response(200, preview_json(preview))
    return await idempotent(
        request,
        principal.tenant,
        lambda: ledger.add_points(
            principal.tenant, customer_id, body.to_lot(), siteCode, actor=principal.actor
        ),
        lambda _: _empty(201),
    )


@router.post(
    "/customer/{customerId}/redeemPoints",
    operation_id="POST-reward-points-redeem-customer-points",
    summary="Redeeming reward points of a customer",
    status_code=201,
    response_class=Response,
    responses={
        201: {"description": "Redeemed; no content."},
        200: DRY_RUN_ANSWER,
        **responses(400, 401, 403, 404, 409, 413, 422, 500, 503),
    },
)
async def redeem_points(
    request: Request,
    principal: ManagePrincipal,
    customer_id: CustomerId,
    ledger: LedgerDep,
    body: Annotated[RedeemedPointsIn, Body()],
    dryRun: DryRun = False,  # noqa: N803
    _key: IdempotencyKey = None,
) -> Response:
    """Spend the customer's unexpired lots, oldest first, without generating a coupon."""
    if dryRun:
        preview = await ledger.preview_redeem(principal.tenant, customer_id, body.to_redemption())
        return json_response(200, preview_json(preview))
    return await idempotent(
        request,
        principal.tenant,
        lambda: ledger.redeem_points(
            principal.tenant, customer_id, body.to_redemption(), actor=principal.actor
        ),
        lambda _: _empty(201),
    )
