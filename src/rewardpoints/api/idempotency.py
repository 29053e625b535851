"""The ``Idempotency-Key`` header on POST requests (Stripe's semantics)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request
from starlette.responses import Response

from ..db import transaction_hook
from ..errors import (
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    RewardPointsError,
)
from ..idempotency import (
    IdempotencyHook,
    IdempotencyStore,
    KeyClaim,
    Replayed,
    StoredResponse,
    fingerprint,
)
from .errors import render

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
T = TypeVar("T")

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Makes the request safe to retry: the first answer to a key is stored "
        "for 24 hours and replayed to every retry with the same key and content.",
    ),
]


def stored_of(response: Response) -> StoredResponse:
    return StoredResponse(response.status_code, bytes(response.body), response.media_type)


def replay(stored: StoredResponse) -> Response:
    return Response(
        stored.body or None,
        status_code=stored.status,
        media_type=stored.media_type,
        headers={"Idempotent-Replayed": "true"},
    )


async def claim_of(
    request: Request, tenant: str, *, customer_id: str | None = None
) -> KeyClaim | None:
    """The request's Idempotency-Key with the fingerprint of its content; None without one."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters",
            field="Idempotency-Key",
        )
    request_hash = fingerprint(
        request.method,
        request.url.path,
        request.url.query,
        customer_id or "",
        await request.body(),
    )
    return KeyClaim(tenant, key, request_hash)


async def refused(request: Request, claim: KeyClaim | None, error: RewardPointsError) -> Response:
    """The answer to a request the service refused; with a key, stored as the key's answer
    when it is the request's own (4xx), not the key's state (in progress, reused)."""
    if isinstance(error, (IdempotencyKeyInProgress, IdempotencyKeyReused)):
        raise error
    response = render(request, error)
    if claim is not None and 400 <= response.status_code < 500:
        # The request ran and was refused: that answer is the key's answer too.
        store: IdempotencyStore = request.app.state.idempotency
        await store.save(claim.tenant, claim.key, claim.request_hash, stored_of(response))
    return response


async def idempotent(
    request: Request,
    tenant: str,
    command: Callable[[], Awaitable[T]],
    answer: Callable[[T], Response],
    *,
    customer_id: str | None = None,
) -> Response:
    """Run ``command``, a single write transaction, once per Idempotency-Key and answer with
    ``answer(result)``, recorded inside that transaction."""
    claim = await claim_of(request, tenant, customer_id=customer_id)
    if claim is None:
        return answer(await command())
    store: IdempotencyStore = request.app.state.idempotency
    in_flight: set[tuple[str, str]] = request.app.state.idempotency_in_flight
    ident = (tenant, claim.key)
    if ident in in_flight:
        raise IdempotencyKeyInProgress(claim.key)
    in_flight.add(ident)
    try:
        stored = await store.lookup(tenant, claim.key, claim.request_hash)
        if stored is not None:
            return replay(stored)

        def record(result: Any) -> StoredResponse:
            return stored_of(answer(result))

        hook = IdempotencyHook(store, tenant, claim.key, claim.request_hash, record)
        try:
            with transaction_hook(hook):
                result = await command()
        except Replayed as replayed:
            return replay(replayed.stored)
        except RewardPointsError as error:
            return await refused(request, claim, error)
        response = answer(result)
        if not hook.recorded:
            await store.save(tenant, claim.key, claim.request_hash, stored_of(response))
        return response
    finally:
        in_flight.discard(ident)
