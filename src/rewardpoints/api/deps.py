"""Dependencies: the principal behind the bearer token, scope checks, and the ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator

from ..auth import MANAGE_SCOPES, VIEW_SCOPES, Principal, TokenVerifier
from ..documents import Documents
from ..errors import AuthenticationFailed, Forbidden, InvalidRequest
from ..ledger import Ledger
from ..rewards import Rewards

bearer = HTTPBearer(
    scheme_name="bearerAuth",
    description="A JWT access token; `rewardpoints token` prints one for development.",
    auto_error=False,
)


# FastAPI resolves every dependency of a request anew, at a cost per dependency: the endpoints
# use few of them, each doing its whole job (the principal and its scopes in one, the path
# parameter's checks in its validator).
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def current_principal(request: Request, credentials: Credentials) -> Principal:
    if credentials is None or not credentials.credentials:
        raise AuthenticationFailed("no bearer token")
    verifier: TokenVerifier = request.app.state.verifier
    principal = await verifier.principal(credentials.credentials)
    header_tenant = request.headers.get("emporix-tenant")
    if header_tenant is not None and header_tenant != principal.tenant:
        raise Forbidden(
            "Tenant validation failed",
            [f"Emporix-Tenant '{header_tenant[:64]}' does not match the token's tenant"],
        )
    return principal


# The scopes each employee dependency demands, read by the OpenAPI document (api/openapi.py)
# to declare every operation's scope from the dependency that enforces it.
REQUIRED_SCOPES: dict[Callable[..., Awaitable[Principal]], tuple[str, ...]] = {}


def employee_with(scopes: tuple[str, ...]) -> Callable[..., Awaitable[Principal]]:
    """A service or employee token holding one of ``scopes``; customer tokens never pass."""

    async def dependency(request: Request, credentials: Credentials) -> Principal:
        principal = await current_principal(request, credentials)
        if principal.is_customer:
            raise Forbidden(
                "Scope validation failed", ["Customer tokens may not use this endpoint"]
            )
        principal.require_any(scopes)
        return principal

    REQUIRED_SCOPES[dependency] = scopes
    return dependency


async def get_ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


async def get_documents(request: Request) -> Documents:
    documents: Documents = request.app.state.documents
    return documents


def _customer_id_ok(customer_id: str) -> str:
    if "\x00" in customer_id:
        # Not a ValueError: pydantic lets it through, and it is answered as the ledger's 400.
        raise InvalidRequest("customerId must not contain NUL characters", field="customerId")
    return customer_id


MAX_CUSTOMER_ID_LENGTH = 255
# The site of a command that names none with ``?siteCode=``.
DEFAULT_SITE_CODE = "main"

ViewPrincipal = Annotated[Principal, Depends(employee_with(VIEW_SCOPES))]
ManagePrincipal = Annotated[Principal, Depends(employee_with(MANAGE_SCOPES))]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
DocumentsDep = Annotated[Documents, Depends(get_documents)]
CustomerId = Annotated[
    str,
    AfterValidator(_customer_id_ok),
    Path(
        alias="customerId",
        min_length=1,
        max_length=MAX_CUSTOMER_ID_LENGTH,
        description="Unique identifier of a customer, generated when the customer is "
        "created through the Customer Service.",
    ),
]


async def customer_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    """A signed-in customer's token (one with a ``customerId`` claim); no scope is needed."""
    if principal.customer_id is None:
        raise Forbidden(
            "Customer validation failed",
            ["Only a signed-in customer's token (with a customerId claim) may use this endpoint"],
        )
    _customer_id_ok(principal.customer_id)
    return principal


async def get_rewards(request: Request) -> Rewards:
    rewards: Rewards = request.app.state.rewards
    return rewards


CustomerPrincipal = Annotated[Principal, Depends(customer_principal)]
RewardsDep = Annotated[Rewards, Depends(get_rewards)]
SiteCode = Annotated[
    str,
    Query(min_length=1, max_length=64, description="Site code, defined when a site is created."),
]
