"""The outbox: work that must follow a committed write, done exactly once.

A command records an intent (``add``) in its write's own transaction, so the write and the
promise of what follows it commit together or not at all. The intent is leased at once to the
process that recorded it (``run_after`` = now + lease), which runs it straight away. If that
process dies, or the database fails before the intent is done, the lease runs out and the
runner of any process (``run_forever``) claims it with ``FOR UPDATE SKIP LOCKED``, leases it
again and runs it again, backing off a lease more after each attempt.

A handler's effects outside the database must be safe to repeat (a coupon created under the
same code is found again). Its effects in the database are made in one transaction that first
``settle``s the intent (locks it, if it is not done yet) and ends with ``done``: those happen
exactly once, however many processes run the intent and however often.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import database_clock, is_unavailable, read_transaction, run_transaction
from .errors import Unavailable
from .models import outbox

log = logging.getLogger("rewardpoints")

# Leases grow with the attempts, up to this many leases between two attempts.
MAX_BACKOFF_LEASES = 10


@dataclass(frozen=True, slots=True)
class Intent:
    id: int
    tenant: str
    kind: str
    payload: dict[str, Any]
    # How many times the intent has been started, this run included.
    attempts: int


Handler = Callable[[Intent], Awaitable[object]]


class Outbox:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease: timedelta,
        poll_interval: float,
        retention: timedelta,
        batch: int = 8,
    ) -> None:
        self.engine = engine
        self.lease = lease
        self.poll_interval = poll_interval
        self.retention = retention
        self.batch = batch
        self.handlers: dict[str, Handler] = {}

    def handle(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    async def add(
        self, conn: AsyncConnection, tenant: str, kind: str, payload: dict[str, Any]
    ) -> Intent:
        """Record an intent in the caller's transaction, leased to the caller."""
        now = database_clock()
        intent_id = (
            await conn.execute(
                insert(outbox)
                .values(
                    tenant=tenant,
                    kind=kind,
                    payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
                    created_at=now,
                    run_after=now + self.lease,
                    attempts=1,
                )
                .returning(outbox.c.id)
            )
        ).scalar_one()
        return Intent(int(intent_id), tenant, kind, payload, 1)

    async def settle(self, conn: AsyncConnection, intent: Intent) -> bool:
        """Lock the intent for its database effects in this transaction; False when it is done
        already (by another run), and nothing is to be done."""
        row = (
            await conn.execute(
                select(outbox.c.id)
                .where(outbox.c.id == intent.id, outbox.c.done_at.is_(None))
                .with_for_update()
            )
        ).first()
        return row is not None

    async def done(self, conn: AsyncConnection, intent: Intent, outcome: dict[str, Any]) -> None:
        """Mark the settled intent done, with its outcome, as its transaction commits."""
        await conn.execute(
            update(outbox)
            .where(outbox.c.id == intent.id)
            .values(
                done_at=database_clock(),
                outcome=json.dumps(outcome, ensure_ascii=False, separators=(",", ":")),
            )
        )

    async def outcome(self, intent: Intent) -> dict[str, Any] | None:
        """The outcome of a done intent; None while it is not done."""
        async with read_transaction(self.engine) as conn:
            stored = await conn.scalar(select(outbox.c.outcome).where(outbox.c.id == intent.id))
        return json.loads(stored) if stored is not None else None

    async def claim_due(self) -> list[Intent]:
        """Lease intents whose lease has run out to this process, oldest first."""
        now = database_clock()
        due = (
            select(outbox.c.id)
            .where(outbox.c.done_at.is_(None), outbox.c.run_after <= now)
            .order_by(outbox.c.run_after)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        leases = func.least(outbox.c.attempts + 1, MAX_BACKOFF_LEASES)
        statement = (
            update(outbox)
            .where(outbox.c.id.in_(due))
            .values(run_after=now + self.lease * leases, attempts=outbox.c.attempts + 1)
            .returning(
                outbox.c.id, outbox.c.tenant, outbox.c.kind, outbox.c.payload, outbox.c.attempts
            )
        )

        async def claim(conn: AsyncConnection) -> list[Intent]:
            rows = (await conn.execute(statement)).all()
            return [
                Intent(int(r.id), r.tenant, r.kind, json.loads(r.payload), int(r.attempts))
                for r in rows
            ]

        return await run_transaction(self.engine, claim)

    async def run(self, intent: Intent) -> object:
        return await self.handlers[intent.kind](intent)

    async def run_due(self) -> int:
        """Run the intents whose lease has run out, up to ``batch`` of them; returns how many
        were claimed. They run at once, each from the moment its lease starts: one after
        another, the last could lose its lease to another process before it even started."""
        intents = await self.claim_due()

        async def run(intent: Intent) -> None:
            try:
                await self.run(intent)
            except Exception as error:  # noqa: BLE001 - recorded; the intent runs again later
                await self._failed(intent, error)

        await asyncio.gather(*(run(intent) for intent in intents))
        return len(intents)

    async def _failed(self, intent: Intent, error: Exception) -> None:
        if is_unavailable(error) or isinstance(error, Unavailable):
            log.warning(
                "outbox intent %d (%s) waits for what it depends on: %s",
                intent.id,
                intent.kind,
                error,
            )
        else:
            log.error("outbox intent %d (%s) failed", intent.id, intent.kind, exc_info=error)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(outbox)
                    .where(outbox.c.id == intent.id)
                    .values(last_error=f"{type(error).__name__}: {error}"[:2000])
                )
        except Exception as note_error:  # noqa: BLE001 - best effort; the lease stands
            log.debug("outbox intent %d: its error not noted: %s", intent.id, note_error)

    async def run_forever(self) -> None:
        while True:
            try:
                while await self.run_due() == self.batch:
                    pass
            except Exception as error:  # noqa: BLE001 - the runner outlives any one failure
                if not is_unavailable(error):
                    log.exception("the outbox runner failed")
            await asyncio.sleep(self.poll_interval)

    async def prune(self) -> int:
        """Delete intents done longer ago than the retention; returns how many."""

        async def prune(conn: AsyncConnection) -> int:
            result = await conn.execute(
                delete(outbox).where(
                    and_(
                        outbox.c.done_at.is_not(None),
                        outbox.c.done_at <= database_clock() - self.retention,
                    )
                )
            )
            return int(result.rowcount or 0)

        return await run_transaction(self.engine, prune)
