"""A stand-in for Emporix's Coupon Service: a real HTTP server on loopback (uvicorn in a
thread), whose answer to each coupon is planned by the test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from .support import free_port

Send = Callable[[dict[str, Any]], Any]


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class FakeCouponService:
    """Emporix's Coupon Service, as far as the issuer uses it. What each POST does is planned
    per tenant: "ok" (create, or 409 if the code exists), "500", "400", "409", "stall" (never
    answer), "store-then-stall" (create, then never answer), "slow" ("ok" after ``delay``
    seconds), "hold" (set ``held``, then never answer), "blip-400" (run ``on_blip``, then
    answer 400). Unplanned POSTs are "ok". Each GET is planned in ``get_plans``: "500" or
    "stall"; unplanned GETs answer the coupon, or 404 when there is none."""

    port: int = field(default_factory=free_port)
    plans: dict[str, list[str]] = field(default_factory=dict)
    get_plans: dict[str, list[str]] = field(default_factory=dict)
    seen: dict[str, list[Seen]] = field(default_factory=dict)
    coupons: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    released: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    delay: float = 1.5
    on_blip: Callable[[], None] = lambda: None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization")
        parts = scope["path"].strip("/").split("/")  # coupon/{tenant}/coupons[/{code}]
        tenant = parts[1]
        self.seen.setdefault(tenant, []).append(
            Seen(
                scope["method"],
                scope["path"],
                authorization.decode() if authorization else None,
                json.loads(raw) if raw else None,
            )
        )
        if scope["method"] == "GET":
            get_plan = self.get_plans.get(tenant, [])
            get_action = get_plan.pop(0) if get_plan else "ok"
            if get_action == "stall":
                await self._stall()
                return
            if get_action == "500":
                await _answer(send, 500, {"status": 500, "type": "failure"})
                return
            found = self.coupons.get((tenant, parts[3].upper()))
            if found is None:
                await _answer(send, 404, {"type": "resource_not_found", "status": 404})
            else:
                await _answer(send, 200, found)
            return
        coupon = json.loads(raw)
        code = coupon["code"].upper()  # as Emporix saves codes by default
        plan = self.plans.get(tenant, [])
        action = plan.pop(0) if plan else "ok"
        if action == "slow":
            await asyncio.sleep(self.delay)
        if action == "hold":
            self.held.set()
            await self._stall()
            return
        if action == "blip-400":
            await asyncio.to_thread(self.on_blip)
            action = "400"
        if action in ("stall", "store-then-stall"):
            if action == "store-then-stall":
                self.coupons[(tenant, code)] = {**coupon, "code": code}
            await self._stall()
            return
        if action in ("500", "400"):
            await _answer(send, int(action), {"status": int(action), "type": "failure"})
            return
        if action == "409" or (tenant, code) in self.coupons:
            duplicate = f"Duplicate Coupon '{code}' on tenant '{tenant}'"
            await _answer(
                send, 409, {"type": "conflict_resource", "status": 409, "message": duplicate}
            )
            return
        self.coupons[(tenant, code)] = {**coupon, "code": code}
        await _answer(send, 201, {"id": code})

    async def _stall(self) -> None:
        deadline = time.monotonic() + 10
        while not self.released.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def posts(self, tenant: str) -> list[Seen]:
        return [s for s in self.seen.get(tenant, []) if s.method == "POST"]

    def gets(self, tenant: str) -> list[Seen]:
        return [s for s in self.seen.get(tenant, []) if s.method == "GET"]


async def _answer(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def serve(service: FakeCouponService) -> Iterator[FakeCouponService]:
    """Run ``service`` until the generator is closed."""
    config = uvicorn.Config(
        service,
        host="127.0.0.1",
        port=service.port,
        lifespan="off",
        ws="none",
        http="h11",
        loop="asyncio",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "coupon service did not start"
        time.sleep(0.01)
    try:
        yield service
    finally:
        service.released.set()
        server.should_exit = True
        thread.join(timeout=10)
