"""Swagger UI served from the service itself (no CDN), and the metrics."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response

from .errors import json_response

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
    )


@router.get("/docs/assets/{name}")
async def swagger_asset(name: str) -> Response:
    media_type = _ASSETS.get(name)
    if media_type is None:
        return json_response(
            404, {"type": "resource_not_found", "status": 404, "message": "Not Found"}
        )
    content = resources.files("fastapi_swagger.resources").joinpath(name).read_bytes()
    return Response(
        content, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus' text format; a 404 unless REWARDPOINTS_METRICS_ENABLED is true."""
    if not request.app.state.settings.metrics_enabled:
        return json_response(
            404, {"type": "resource_not_found", "status": 404, "message": "Not Found"}
        )
    from ..metrics import exposition

    body, media_type = exposition()
    return Response(body, media_type=media_type)
