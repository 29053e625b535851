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
    """Request validation answers 400 for any parameter or body, and the body limit answers 413
    for any body, whether or not a route lists those answers: document them on every operation
    they can reach."""
    bad_request = {"$ref": "#/components/schemas/BadRequestBody"}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if operation.get("parameters") or "requestBody" in operation:
                responses.setdefault(
                    "400",
                    {
                        "description": "Invalid parameter or body.",
                        "content": {"application/json": {"schema": bad_request}},
                    },
                )
            if "requestBody" in operation:
                responses.setdefault(
                    "413",
                    {
                        "description": "Request body too large.",
                        "content": {"application/json": {"schema": bad_request}},
                    },
                )
