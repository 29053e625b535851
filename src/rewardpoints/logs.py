"""The process log: text or one JSON object a line (``REWARDPOINTS_LOG_FORMAT``), uvicorn's
access log included, each line carrying the request id of the request it was written for.

The request id is the request's ``X-Request-ID`` header when it is a sensible one (1 to 128
characters of letters, digits and ``-._:``), else a new one; either way it is echoed back in
the response's ``X-Request-ID``.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.types import Message, Scope, Send

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
request_id: ContextVar[str | None] = ContextVar("rewardpoints_request_id", default=None)


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER:
            if _VALID_ID.fullmatch(value):
                given: str = value.decode()
                return given
            break
    return uuid.uuid4().hex


def with_request_id(scope: Scope, send: Send) -> Send:
    """Set the request's id for everything done for it (this task's context), and return
    ``send`` echoing it back in the response's headers."""
    ident = request_id_of(scope)
    request_id.set(ident)
    header = (HEADER, ident.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return send_with_id


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record ("-" outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class AccessFields(logging.Filter):
    """Gives uvicorn's access lines their parts as fields, for the JSON log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            record.client, record.method, record.path, _, record.status = args
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service's and uvicorn's loggers."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "access_fields": {"()": AccessFields},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": handler,
            "access": {**handler, "filters": ["request_id", "access_fields"]},
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
