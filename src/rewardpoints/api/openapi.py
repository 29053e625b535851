"""The OpenAPI document, without FastAPI's 422 responses (this service answers 400 instead),
with every operation's security requirement as Emporix's spec declares it, and the answers
that come from the framework and the request limits."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

from ..auth import MANAGE_SCOPES, VIEW_SCOPES
from .deps import REQUIRED_SCOPES, bearer, current_principal, customer_principal

OAUTH2 = "OAuth2"
CUSTOMER_SCHEME = "CustomerAccessToken"
# Emporix's two schemes. The plain bearer scheme (deps.bearer) stays beside them: it is where
# Swagger UI takes a token pasted as it is, e.g. one printed by `rewardpoints token`.
SECURITY_SCHEMES: dict[str, Any] = {
    OAUTH2: {
        "type": "oauth2",
        "description": "An employee's or a service's access token with the scope the operation "
        "names (or its `saasag.` alias). Tokens verified by this service may come from any "
        "issuer it is configured for; pasted as they are, they go in bearerAuth.",
        "flows": {
            "clientCredentials": {
                "tokenUrl": "https://api.emporix.io/oauth/token",
                "scopes": {
                    VIEW_SCOPES[0]: "Needed to view reward points information",
                    MANAGE_SCOPES[0]: "Needed to manage reward points",
                },
            }
        },
    },
    CUSTOMER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "A signed-in customer's access token (with a customerId claim).",
    },
}
BEARER = bearer.scheme_name


def operation_security(route: APIRoute) -> list[dict[str, list[str]]] | None:
    """What the route's principal dependency demands, the outermost one found; None for a
    route that takes no token."""
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop(0)
        call = dependant.call
        if call is not None and call in REQUIRED_SCOPES:
            return [{OAUTH2: [REQUIRED_SCOPES[call][0]]}, {BEARER: []}]
        if call is customer_principal:
            return [{CUSTOMER_SCHEME: []}]
        if call is current_principal:
            return [{OAUTH2: []}, {CUSTOMER_SCHEME: []}, {BEARER: []}]
        pending.extend(dependant.dependencies)
    return None


def openapi_builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    if isinstance(operation, dict) and "HTTPValidationError" in str(
                        operation.get("responses", {}).get("422")
                    ):
                        operation["responses"].pop("422")
            schemas = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            _declare_security(app, schema)
            _document_framework_errors(schema)
            _give_each_problem_its_status(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def _declare_security(app: FastAPI, schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {**SECURITY_SCHEMES, **components.get("securitySchemes", {})}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        path_item = schema["paths"].get(context.path_format or "")
        if not isinstance(route, APIRoute) or path_item is None:
            continue
        security = operation_security(route)
        for method in route.methods or ():
            operation = path_item.get(method.lower())
            if operation is None:
                continue
            if security is None:
                operation.pop("security", None)
            else:
                operation["security"] = security


def _document_framework_errors(schema: dict[str, Any]) -> None:
    """Answers that come from the framework and the request limits rather than from a route:
    400 for any invalid parameter or body, 413 for any body over the limit, 415 for a body
    that is not JSON, 414 and 431 for a request target or headers over theirs. Documented on
    every operation they can reach."""

    def answer(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": dict(_PROBLEM)}},
        }

    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("parameters") or "requestBody" in operation:
                responses.setdefault("400", answer("Invalid parameter or body."))
            if "requestBody" in operation:
                responses.setdefault("413", answer("Request body too large."))
                responses.setdefault(
                    "415", answer("Request body without Content-Type: application/json.")
                )
            responses.setdefault("414", answer("Request path and query too long."))
            responses.setdefault("431", answer("Request headers too large."))


_PROBLEM = {"$ref": "#/components/schemas/BadRequestBody"}


def _give_each_problem_its_status(schema: dict[str, Any]) -> None:
    """The problem shape serves many statuses, and its schema's defaults show 400: each
    answer in that shape gets an example with its own status and title."""
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {}).get("application/json")
                if content is None or content.get("schema") != _PROBLEM:
                    continue
                code = int(status)
                content["example"] = {
                    "type": "about:blank",
                    "title": HTTPStatus(code).phrase,
                    "status": code,
                    "detail": response["description"],
                    "instance": path.removeprefix("/reward-points") or "/",
                }
