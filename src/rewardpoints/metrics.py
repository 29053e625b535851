"""Prometheus metrics, served at ``/metrics`` when ``REWARDPOINTS_METRICS_ENABLED=true``.

With several workers, prometheus-client's multiprocess mode adds them up: ``serve`` gives the
processes one ``PROMETHEUS_MULTIPROC_DIR`` (fresh for each start) before any of them imports
this module, and ``/metrics`` reads every process's values from there.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# A request to a path no route has: one label value, whatever the path.
UNMATCHED = "unmatched"
# Where the fast lane (api/fastlane.py) names the route it answered.
ROUTE_KEY = "rewardpoints.route"

REQUESTS = Counter(
    "rewardpoints_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "rewardpoints_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
POINTS = Counter(
    "rewardpoints_points",
    "Points written to the ledger: added (addPoints, startPoints, orders), redeemed (redeemPoints"
    " and coupons), charged_back (coupons that could not be issued).",
    ["kind"],
)
REFUSALS = Counter(
    "rewardpoints_ledger_refusals",
    "Requests the service refused, by kind of refusal (the error's name).",
    ["kind"],
)
POOL_IN_USE = Gauge(
    "rewardpoints_db_pool_connections_in_use",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)
POOL_WAITING = Gauge(
    "rewardpoints_db_pool_waiting",
    "Requests waiting for a database connection (a free one, or one being opened).",
    multiprocess_mode="livesum",
)
EXPORTS = Gauge(
    "rewardpoints_summary_batch_exports_in_flight",
    "summaryBatch exports being sent.",
    multiprocess_mode="livesum",
)
REPLICA_LAG = Gauge(
    "rewardpoints_read_replica_lag_seconds",
    "How far the read replica is behind the primary, as last measured (NaN: unreachable).",
    multiprocess_mode="livemax",
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, of every process when there are several."""
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def route_of(scope: Scope) -> str:
    """The template of the route that answered (the fast lane names its own)."""
    template = scope.get(ROUTE_KEY)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return template or UNMATCHED


async def measured(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` for the request, counting it by route, method and status, and timing it."""
    started = time.perf_counter()
    status = 500  # no answer started: what the server sends for an app that failed

    async def send_and_note(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await app(scope, receive, send_and_note)
    finally:
        route, method = route_of(scope), scope["method"]
        REQUESTS.labels(route, method, str(status)).inc()
        LATENCY.labels(route, method).observe(time.perf_counter() - started)


def count_pool_connections(engine: AsyncEngine) -> None:
    """Keep ``rewardpoints_db_pool_connections_in_use`` as the pool's checkouts and checkins."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _out(*_: Any) -> None:
        POOL_IN_USE.inc()

    @event.listens_for(engine.sync_engine, "checkin")
    def _in(*_: Any) -> None:
        POOL_IN_USE.dec()
