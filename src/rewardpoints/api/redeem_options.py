"""Redeem Options Management: the tenant's ways to turn points into a coupon."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import AfterValidator
from starlette.responses import Response

from ..auth import RESERVED_TENANTS, Principal
from ..documents import dumps
from ..errors import Forbidden, InvalidRequest, ResourceNotFound
from ..redeem_options import RedeemOptionStore
from .deps import ManagePrincipal, RewardsDep, current_principal
from .errors import VersionConflictBody, responses
from .idempotency import IdempotencyKey, idempotent
from .schemas import RedeemOptionIn, RedeemOptionOut, _no_nul, redeem_option_json

router = APIRouter(prefix="/reward-points", tags=["Redeem Options Management"])

TenantPath = Annotated[str, Path(max_length=64, description="Tenant name.")]
OptionId = Annotated[
    str,
    Path(max_length=255, description="Unique identifier of a redeem option."),
    # PostgreSQL refuses a NUL in a text parameter (a 500): refuse it here, with a 400.
    AfterValidator(_no_nul),
]


async def path_tenant(tenant: TenantPath) -> str:
    if tenant in RESERVED_TENANTS:
        # "customer" and "public" are paths of their own, never a tenant: checked before the
        # token, so these paths answer as unknown paths do.
        raise ResourceNotFound("Not Found")
    return tenant


PathTenant = Annotated[str, Depends(path_tenant)]


def _tenant_checked(tenant: str, principal: Principal) -> str:
    if tenant != principal.tenant:
        raise Forbidden(
            "Tenant validation failed",
            [f"Tenant '{tenant}' in the path does not match the token's tenant"],
        )
    return tenant


async def any_principal_of_tenant(
    tenant: PathTenant, principal: Annotated[Principal, Depends(current_principal)]
) -> str:
    """Any valid token of the path's tenant: employee, service or customer."""
    return _tenant_checked(tenant, principal)


async def manager_of_tenant(tenant: PathTenant, principal: ManagePrincipal) -> str:
    """An employee or service token of the path's tenant with the manage scope."""
    return _tenant_checked(tenant, principal)


ReaderTenant = Annotated[str, Depends(any_principal_of_tenant)]
ManagerTenant = Annotated[str, Depends(manager_of_tenant)]


def _store(rewards: RewardsDep) -> RedeemOptionStore:
    return rewards.redeem_options


Store = Annotated[RedeemOptionStore, Depends(_store)]


def _json(body: object) -> Response:
    return Response(dumps(body), media_type="application/json")


@router.get(
    "/{tenant}/redeemOptions",
    operation_id="GET-reward-points-list-redeem-options",
    summary="Retrieving redemption options",
    response_model=list[RedeemOptionOut],
    responses=responses(401, 403, 500, 503),
)
async def list_options(tenant: ReaderTenant, store: Store) -> Response:
    """All the tenant's redeem options, oldest first. Any valid token of the tenant may read."""
    return _json([redeem_option_json(option) for option in await store.for_tenant(tenant)])


@router.post(
    "/{tenant}/redeemOptions",
    operation_id="POST-reward-points-create-redeem-options",
    summary="Creating redemption options",
    status_code=200,
    response_model=list[RedeemOptionOut],
    responses=responses(400, 401, 403, 413, 422, 500, 503),
)
async def create_option(
    request: Request,
    tenant: ManagerTenant,
    store: Store,
    body: Annotated[RedeemOptionIn, Body()],
    _key: IdempotencyKey = None,
) -> Response:
    """Add a redeem option; answers the tenant's options, the new one included."""
    return await idempotent(
        request,
        tenant,
        lambda: store.create(tenant, body.content()),
        lambda options: _json([redeem_option_json(option) for option in options]),
    )


@router.put(
    "/{tenant}/redeemOptions/{redeemOptionId}",
    operation_id="PUT-reward-points-update-redeem-option",
    summary="Updating redemption options",
    status_code=200,
    response_class=Response,
    responses={
        200: {"description": "Updated; no content."},
        **responses(400, 401, 403, 404, 413, 500, 503),
        409: {"model": VersionConflictBody, "description": "The option has changed since."},
    },
)
async def replace_option(
    tenant: ManagerTenant,
    redeemOptionId: OptionId,  # noqa: N803 - Emporix's parameter name
    store: Store,
    body: Annotated[RedeemOptionIn, Body()],
) -> Response:
    """Replace the whole option and bump its version. With `metadata.version` the update
    applies only while that is the current version (409 otherwise)."""
    if body.id is not None and body.id != redeemOptionId:
        raise InvalidRequest("id in the body differs from the path", field="id")
    await store.replace(tenant, redeemOptionId, body.content(), body.expected_version)
    return Response(status_code=200)


@router.delete(
    "/{tenant}/redeemOptions/{redeemOptionId}",
    operation_id="DELETE-reward-points-remove-redeem-option",
    summary="Deleting redemption options",
    status_code=204,
    response_class=Response,
    responses={
        204: {"description": "Deleted; no content."},
        **responses(401, 403, 404, 500, 503),
    },
)
async def delete_option(
    tenant: ManagerTenant,
    redeemOptionId: OptionId,  # noqa: N803
    store: Store,
) -> Response:
    """Delete the option. Coupons already issued from it stay as they are."""
    await store.delete(tenant, redeemOptionId)
    return Response(status_code=204)
