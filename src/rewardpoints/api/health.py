"""Liveness and readiness, for orchestrators and load balancers; no token needed."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text
from starlette.responses import Response

from ..db import is_unavailable
from ..ledger import Ledger
from .errors import json_response, responses, server_error

router = APIRouter(prefix="/health", tags=["Health"])
log = logging.getLogger("rewardpoints")


class HealthOut(BaseModel):
    status: Literal["UP"]


@router.get(
    "/live",
    operation_id="GET-health-live",
    summary="Liveness: the process answers",
    response_model=HealthOut,
    responses=responses(500),
)
async def live() -> Response:
    return json_response(200, {"status": "UP"})


@router.get(
    "/ready",
    operation_id="GET-health-ready",
    summary="Readiness: the database answers",
    response_model=HealthOut,
    responses=responses(500, 503),
)
async def ready(request: Request) -> Response:
    ledger: Ledger = request.app.state.ledger
    try:
        # The database, and the primary's own connections beside a pooler when configured.
        for engine in dict.fromkeys((ledger.engine, ledger.direct.engine)):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as error:  # noqa: BLE001 - whatever the database's failure: not ready
        level = logging.WARNING if is_unavailable(error) else logging.ERROR
        log.log(level, "not ready: the database failed: %s", error, exc_info=level >= logging.ERROR)
        return server_error(request, 503)
    return json_response(200, {"status": "UP"})
