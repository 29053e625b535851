"""The OpenAPI document, without FastAPI's 422 responses: this service answers 400 instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


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
            _document_framework_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def _document_framework_errors(schema: dict[str, Any]) -> None:
    """Answers that come from the framework and the request limits rather than from a route:
    400 for any invalid parameter or body, 413 for any body over the limit, 414 and 431 for a
    request target or headers over theirs. Documented on every operation they can reach."""
    bad_request = {"$ref": "#/components/schemas/BadRequestBody"}

    def answer(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": bad_request}},
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
            responses.setdefault("414", answer("Request path and query too long."))
            responses.setdefault("431", answer("Request headers too large."))
