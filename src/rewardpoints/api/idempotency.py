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
from ..idempotency import IdempotencyHook, IdempotencyStore, Replayed, StoredResponse, fingerprint
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


async def idempotent(
    request: Request,
    tenant: str,
    command: Callable[[], Awaitable[T]],
    answer: Callable[[T], Response],
    *,
    customer_id: str | None = None,
    answer_in_transaction: bool = True,
) -> Response:
    """Run ``command`` once per Idempotency-Key and answer with ``answer(result)``.

    With ``answer_in_transaction`` the answer is recorded inside the command's first write
    transaction; commands whose answer is only known after several steps record it after.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return answer(await command())
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters",
            field="Idempotency-Key",
        )
    store: IdempotencyStore = request.app.state.idempotency
    in_flight: set[tuple[str, str]] = request.app.state.idempotency_in_flight
    request_hash = fingerprint(
        request.method,
        request.url.path,
        request.url.query,
        customer_id or "",
        await request.body(),
    )
    ident = (tenant, key)
    if ident in in_flight:
        raise IdempotencyKeyInProgress(key)
    in_flight.add(ident)
    try:
        stored = await store.lookup(tenant, key, request_hash)
        if stored is not None:
            return replay(stored)

        def record(result: Any) -> StoredResponse:
            return stored_of(answer(result))

        hook = IdempotencyHook(
            store, tenant, key, request_hash, record if answer_in_transaction else None
        )
        try:
            with transaction_hook(hook):
                result = await command()
        except Replayed as replayed:
            return replay(replayed.stored)
        except (IdempotencyKeyInProgress, IdempotencyKeyReused):
            raise
        except RewardPointsError as error:
            response = render(request, error)
            if 400 <= response.status_code < 500:
                # The request ran and was refused: that answer is the key's answer too.
                await store.save(tenant, key, request_hash, stored_of(response))
            return response
        response = answer(result)
        if not hook.recorded:
            await store.save(tenant, key, request_hash, stored_of(response))
        return response
    finally:
        in_flight.discard(ident)
