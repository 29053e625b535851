"""One table from errors to statuses and Emporix-shaped bodies, and the handlers that use it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..db import DRIVER_ERRORS, is_unavailable
from ..documents import dumps
from ..errors import (
    AuthenticationFailed,
    CustomerExists,
    CustomerNotFound,
    EntryConflict,
    Forbidden,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InsufficientPoints,
    InvalidRequest,
    OrderConflict,
    ResourceNotFound,
    RewardPointsError,
    Unavailable,
    VersionConflict,
)
from ..metrics import REFUSALS

log = logging.getLogger("rewardpoints")

API_PREFIX = "/reward-points"

UNAUTHORIZED_BODY = {
    "fault": {
        "faultstring": "Invalid access token",
        "detail": {"errorcode": "oauth.v2.InvalidAccessToken"},
    }
}


# ---- bodies, as documented in the OpenAPI document ---------------------------------------


class FieldError(BaseModel):
    field: str | None
    message: str


class BadRequestBody(BaseModel):
    type: str = "about:blank"
    title: str = "Bad Request"
    status: int = 400
    detail: str
    instance: str
    errors: list[FieldError] | None = None


class _FaultDetail(BaseModel):
    errorcode: str


class _Fault(BaseModel):
    faultstring: str
    detail: _FaultDetail


class UnauthorizedBody(BaseModel):
    fault: _Fault


class ForbiddenBody(BaseModel):
    code: int = 403
    status: str = "Forbidden"
    message: str
    details: list[str]


class NotFoundBody(BaseModel):
    type: str = "resource_not_found"
    status: int = 404
    message: str


class ConflictDetail(BaseModel):
    field: str | None
    type: str | None
    message: str
    moreInfo: str  # noqa: N815


class ConflictBody(BaseModel):
    status: int = 409
    type: str = "application/json"
    message: str
    moreInfo: str  # noqa: N815
    details: list[ConflictDetail]


class ServerErrorBody(BaseModel):
    timestamp: str
    status: int
    error: str
    path: str


class BadGatewayBody(ServerErrorBody):
    message: str


class _VersionConflictDetails(BaseModel):
    message: str


class VersionConflictBody(BaseModel):
    status: int = 409
    message: str = "RedeemOption not Updated"
    details: _VersionConflictDetails


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    table: dict[int, tuple[type[BaseModel], str]] = {
        400: (BadRequestBody, "Request syntactically incorrect or breaking a ledger rule."),
        401: (UnauthorizedBody, "Missing, malformed, expired or badly signed access token."),
        403: (ForbiddenBody, "Valid token without the required scope or tenant."),
        404: (NotFoundBody, "No reward points entry for the customer."),
        409: (ConflictBody, "Conflict with an existing entry."),
        413: (BadRequestBody, "Request body too large."),
        422: (BadRequestBody, "Idempotency-Key already used with a different request."),
        500: (ServerErrorBody, "Internal error."),
        503: (ServerErrorBody, "Database unreachable or busy; retry later."),
        502: (BadGatewayBody, "The coupon could not be created; the points were given back."),
    }
    return {
        status: {"model": table[status][0], "description": table[status][1]} for status in statuses
    }


# ---- rendering -----------------------------------------------------------------------------


def instance_of(request: Request) -> str:
    return instance_of_path(request.url.path, request.scope.get("root_path", ""))


def instance_of_path(path: str, root: str = "") -> str:
    """The path as Emporix writes it in a body: without the root path and ``/reward-points``."""
    if root and path.startswith(root):
        path = path[len(root) :]
    return path[len(API_PREFIX) :] or "/" if path.startswith(API_PREFIX) else path


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


def bad_request(
    request: Request, detail: str, errors: list[dict[str, Any]] | None = None, status: int = 400
) -> Response:
    return problem(status, detail, instance_of(request), errors)


def problem(
    status: int, detail: str, instance: str, errors: list[dict[str, Any]] | None = None
) -> Response:
    """The 400 shape, for any 4xx about the request itself."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors:
        body["errors"] = errors
    return json_response(status, body)


def unauthorized() -> Response:
    return json_response(401, UNAUTHORIZED_BODY, {"WWW-Authenticate": "Bearer"})


def forbidden(message: str, details: list[str]) -> Response:
    return json_response(
        403, {"code": 403, "status": "Forbidden", "message": message, "details": details}
    )


def not_found(message: str) -> Response:
    return json_response(404, {"type": "resource_not_found", "status": 404, "message": message})


def conflict(message: str, detail: str, field: str | None = None) -> Response:
    return json_response(
        409,
        {
            "status": 409,
            "type": "application/json",
            "message": message,
            "moreInfo": "",
            "details": [{"field": field, "type": None, "message": detail, "moreInfo": ""}],
        },
    )


def server_error(request: Request, status: int) -> Response:
    names = {500: "Internal Server Error", 503: "Service Unavailable"}
    body = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "status": status,
        "error": names[status],
        "path": instance_of(request),
    }
    headers = {"Retry-After": "1"} if status == 503 else None
    return json_response(status, body, headers)


def bad_gateway(path: str, message: str, *, at: str | None = None) -> Response:
    body = {
        "timestamp": at or datetime.now(UTC).isoformat(timespec="milliseconds"),
        "status": 502,
        "error": "Bad Gateway",
        "message": message,
        "path": path,
    }
    return json_response(502, body)


def version_conflict(message: str) -> Response:
    body = {"status": 409, "message": "RedeemOption not Updated", "details": {"message": message}}
    return json_response(409, body)


def render(request: Request, error: RewardPointsError) -> Response:
    if not isinstance(error, Unavailable):
        REFUSALS.labels(type(error).__name__).inc()
    match error:
        case InsufficientPoints() | InvalidRequest():
            field = getattr(error, "field", None) or "points"
            return bad_request(request, str(error), [{"field": field, "message": str(error)}])
        case AuthenticationFailed():
            # Why, for the operator (expired, bad signature, unknown key, ...); never the token.
            log.info("401 unauthorized: %s", error)
            return unauthorized()
        case Forbidden():
            return forbidden(str(error), error.details)
        case CustomerNotFound():
            return not_found(str(error))
        case CustomerExists():
            return conflict("New Reward Point Entry not Created", str(error))
        case EntryConflict():
            return conflict("Reward Point Entry not Created", str(error), field="id")
        case ResourceNotFound():
            return not_found(str(error))
        case VersionConflict():
            return version_conflict(str(error))
        case OrderConflict():
            return conflict("Reward Point Entry not Created", str(error), field="orderId")
        case IdempotencyKeyInProgress():
            return conflict("Request in progress", str(error), field="Idempotency-Key")
        case IdempotencyKeyReused():
            return bad_request(
                request, str(error), [{"field": "Idempotency-Key", "message": str(error)}], 422
            )
        case Unavailable():
            log.warning("service unavailable: %s", error)
            return server_error(request, 503)
    log.error("unmapped error %r", error)
    return server_error(request, 500)


def _field_of(location: tuple[Any, ...]) -> str | None:
    parts = [str(part) for part in location if part not in ("body", "path", "query", "header")]
    return ".".join(parts) or None


JSON_MEDIA_TYPE = "application/json"


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a body of this Content-Type is read as JSON, as FastAPI decides it:
    application/json or application/*+json, with any parameters."""
    if content_type is None:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def unsupported_media_type(request: Request) -> Response:
    given = request.headers.get("content-type")
    if given is None:
        detail = f"Content-Type {JSON_MEDIA_TYPE} is required for a request body"
    else:
        detail = f"Content-Type must be {JSON_MEDIA_TYPE}, not '{given[:100]}'"
    response = bad_request(request, detail, status=415)
    # RFC 9110 section 15.5.16: the media types that would have been accepted.
    response.headers["Accept"] = JSON_MEDIA_TYPE
    return response


def validation_failed(request: Request, error: RequestValidationError) -> Response:
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return bad_request(request, "Malformed JSON request body")
    if any(p.get("type") == "missing" and tuple(p.get("loc", ())) == ("body",) for p in problems):
        return bad_request(request, "Request body is required")
    if not is_json_media_type(request.headers.get("content-type")) and any(
        tuple(p.get("loc", ()))[:1] == ("body",) for p in problems
    ):
        # FastAPI reads a body as JSON only by its Content-Type, and hands any other to the
        # model as bytes, which no model takes: the media type is what is wrong.
        return unsupported_media_type(request)
    fields = [
        {"field": _field_of(tuple(p.get("loc", ()))), "message": str(p.get("msg", "invalid"))}
        for p in problems
    ]
    first = fields[0] if fields else {"field": None, "message": "Invalid request content."}
    detail = f"{first['field']}: {first['message']}" if first["field"] else str(first["message"])
    return bad_request(request, detail, fields)


def install(app: FastAPI) -> None:
    async def on_domain_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RewardPointsError)
        return render(request, error)

    async def on_validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        return validation_failed(request, error)

    async def on_http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        if error.status_code == 404:
            return not_found("Not Found")
        if error.status_code == 401:
            return unauthorized()
        if error.status_code >= 500:
            return server_error(request, 503 if error.status_code == 503 else 500)
        detail = str(error.detail)
        # FastAPI answers "There was an error parsing the body" to any body json cannot read.
        if isinstance(error.__cause__, RecursionError):
            detail = "Malformed JSON request body: nested too deeply"
        elif isinstance(error.__cause__, UnicodeDecodeError):
            detail = "Malformed JSON request body: not valid UTF-8"
        response = bad_request(request, detail, status=error.status_code)
        response.headers.update(error.headers or {})  # e.g. Allow, on a 405
        return response

    async def on_database_error(request: Request, error: Exception) -> Response:
        if is_unavailable(error):
            log.warning("database unavailable: %s", error)
            return server_error(request, 503)
        log.exception("database error", exc_info=error)
        return server_error(request, 500)

    async def on_unexpected(request: Request, error: Exception) -> Response:
        if is_unavailable(error):  # e.g. a PostgreSQL error the driver raised by itself
            return await on_database_error(request, error)
        log.exception("unexpected error", exc_info=error)
        return server_error(request, 500)

    app.add_exception_handler(RewardPointsError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(DBAPIError, on_database_error)
    app.add_exception_handler(PoolTimeout, on_database_error)
    app.add_exception_handler(OSError, on_database_error)
    for driver_error in DRIVER_ERRORS:  # the driver's own, raised outside SQLAlchemy
        app.add_exception_handler(driver_error, on_database_error)
    app.add_exception_handler(Exception, on_unexpected)
