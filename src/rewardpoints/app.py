"""The application factory: routers, error handlers, and a lifespan that owns the engine."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import docs, errors, management
from .api.limits import BodyLimitMiddleware
from .api.openapi import openapi_builder
from .auth import JwksCache, TokenVerifier
from .config import Settings
from .db import create_engine
from .ledger import Clock, Ledger, utcnow

DESCRIPTION = (
    "Collect reward points and exchange them for coupons. A self-hosted implementation of "
    "the Emporix Reward-points Service. Authorize with a bearer token; "
    '`rewardpoints token --tenant T --scope "rewardspoints.rewardpoints_view '
    'rewardspoints.rewardpoints_manage"` prints one for development.'
)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    jwks: JwksCache | None = None,
) -> FastAPI:
    settings = settings or Settings()
    engine = create_engine(settings)
    ledger = Ledger(engine, settings.sites(), clock or utcnow)
    verifier = TokenVerifier(settings, jwks=jwks)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Reward Points Service",
        description=DESCRIPTION,
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.verifier = verifier
    errors.install(app)
    app.include_router(management.router)
    app.include_router(docs.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.openapi = openapi_builder(app)  # type: ignore[method-assign]
    logging.getLogger("rewardpoints").setLevel(logging.INFO)
    return app
