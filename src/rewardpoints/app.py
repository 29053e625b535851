"""The application factory: routers, error handlers, and a lifespan that owns the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.types import Receive, Scope, Send

from . import __version__
from .api import docs, errors, extensions, health, management, orders, public, redeem_options
from .api.cors import Cors
from .api.fastlane import FastLane
from .api.idempotency import stored_of
from .api.limits import MAX_HEADER_BYTES, MAX_TARGET_BYTES, BodyLimitMiddleware
from .api.openapi import openapi_builder
from .auth import JwksCache, TokenVerifier
from .config import Settings
from .db import Clock, create_engine, is_unavailable
from .documents import Documents
from .idempotency import IdempotencyStore
from .ledger import Ledger
from .logs import with_request_id
from .metrics import count_pool_connections, measured
from .outbox import Outbox
from .replica import HeavyReads
from .rewards import build_rewards

DESCRIPTION = (
    "Collect reward points and exchange them for coupons. A self-hosted implementation of "
    "the Emporix Reward-points Service. Authorize with a bearer token; "
    '`rewardpoints token --tenant T --scope "rewardspoints.rewardpoints_view '
    'rewardspoints.rewardpoints_manage"` prints one for development.'
)


class RewardPointsApp(FastAPI):
    """The FastAPI application, with the fast lane (api/fastlane.py) in front of all of it:
    the requests it answers skip FastAPI's and Starlette's middleware stack too, whose outer
    layers only catch errors, which the fast lane answers as they would. CORS, when origins
    are configured (api/cors.py), is in front of both, so it covers every answer."""

    fast_lane: FastLane | None = None
    cors: Cors | None = None
    measured: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = with_request_id(scope, send)
            if self.measured:
                await measured(self._serve, scope, receive, send)
                return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cors is None:
            await self._dispatch(scope, receive, send)
        else:
            await self.cors(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_lane is None:
            await super().__call__(scope, receive, send)
        else:
            scope["app"] = self  # as Starlette sets it, for the error handlers' requests
            await self.fast_lane(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    jwks: JwksCache | None = None,
) -> FastAPI:
    """The service. ``clock`` is for tests only: the database then reads its time from it
    instead of its own clock (db.create_engine), for every time the service records."""
    settings = settings or Settings()
    engine = create_engine(settings, clock=clock)
    # The one-statement requests' own connections to the primary, beside a pooler.
    direct_engine = (
        create_engine(settings, clock=clock, url=settings.database_direct_url, through_pooler=False)
        if settings.database_direct_url
        else None
    )
    ledger = Ledger(
        engine,
        settings.sites(),
        lock_timeout_seconds=settings.lock_timeout_ms / 1000,
        write_statements=settings.write_statements,
        direct_engine=direct_engine,
    )
    documents = Documents.configured(engine, settings)
    heavy_reads = HeavyReads(
        engine,
        create_engine(settings, url=settings.read_replica_url)
        if settings.read_replica_url
        else None,
        max_lag_seconds=settings.read_replica_max_lag_seconds,
    )
    verifier = TokenVerifier(settings, jwks=jwks)

    idempotency = IdempotencyStore(engine, timedelta(hours=settings.idempotency_ttl_hours))
    outbox = Outbox(
        engine,
        lease=timedelta(seconds=settings.outbox_lease_seconds),
        poll_interval=settings.outbox_poll_seconds,
        retention=timedelta(hours=settings.idempotency_ttl_hours),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(
                _prune_forever(idempotency, outbox, settings.idempotency_prune_interval_seconds)
            ),
            asyncio.create_task(outbox.run_forever()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await heavy_reads.dispose()
            if direct_engine is not None:
                await direct_engine.dispose()
            await engine.dispose()

    app = RewardPointsApp(
        title="Reward Points Service",
        description=DESCRIPTION,
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # Starlette answers a path with a trailing slash by a redirect to a URL built from the
        # request's Host header, before any token is checked: a redirect to any host a client
        # names. Such a path names nothing here, and gets the 404 of any unknown path.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.documents = documents
    app.state.heavy_reads = heavy_reads
    app.state.verifier = verifier
    app.state.rewards = build_rewards(
        settings,
        ledger,
        outbox,
        idempotency,
        lambda outcome: stored_of(public.redeem_answer(outcome)),
    )
    app.state.idempotency = idempotency
    app.state.outbox = outbox
    app.state.idempotency_in_flight = set()
    errors.install(app)
    app.include_router(management.router)
    app.include_router(extensions.router)
    # The static /public/... and /customer/... paths before /{tenant}/redeemOptions, so
    # "public" and "customer" are never read as a tenant.
    app.include_router(public.router)
    app.include_router(orders.router)
    app.include_router(redeem_options.router)
    app.include_router(docs.router)
    app.include_router(health.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.fast_lane:
        app.fast_lane = FastLane(
            partial(FastAPI.__call__, app),
            ledger=ledger,
            verifier=verifier,
            handlers=app.exception_handlers,
            max_bytes=settings.max_body_bytes,
            max_header_bytes=MAX_HEADER_BYTES,
            max_target_bytes=MAX_TARGET_BYTES,
        )
    if settings.cors_allowed_origins:
        app.cors = Cors(
            app._dispatch, origins=settings.cors_allowed_origins, methods=_route_methods(app)
        )
    if settings.metrics_enabled:
        app.measured = True
        count_pool_connections(engine)
        if direct_engine is not None:
            count_pool_connections(direct_engine)
    app.openapi = openapi_builder(app)  # type: ignore[method-assign]
    logging.getLogger("rewardpoints").setLevel(logging.INFO)
    return app


def _route_methods(app: FastAPI) -> list[str]:
    methods: set[str] = set()
    for context in iter_route_contexts(app.routes):
        methods |= getattr(context.original_route, "methods", None) or set()
    return sorted(methods)


async def _prune_forever(store: IdempotencyStore, outbox: Outbox, interval: float) -> None:
    log = logging.getLogger("rewardpoints")
    while True:
        await asyncio.sleep(interval)
        try:
            pruned = await store.prune()
            done = await outbox.prune()
        except Exception as error:
            if not is_unavailable(error):
                log.exception("pruning idempotency keys and settled outbox intents failed")
            continue
        if pruned or done:
            log.info("pruned %d expired idempotency keys, %d settled outbox intents", pruned, done)
