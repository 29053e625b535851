"""The busiest statements, sent straight through asyncpg on PostgreSQL.

A balance read, an addPoints and a redeemPoints are one statement each on PostgreSQL (the last
two call the database functions of migration 0004). Executed through SQLAlchemy, such a
statement costs about three times the CPU of the statement itself in asyncpg: the
compiled-statement cache lookup, parameter and result processing, and the adapter's own
prepared-statement bookkeeping. Here the connection still comes from the engine's pool (one pool,
one set of limits, disposed with the engine), but the statement goes to the driver, which
prepares it once per connection and keeps it.

Without a transaction around it each statement commits by itself, which is what these
single-statement commands need. Errors come out as the rest of the ledger's do: a deadlock or
serialisation failure is retried, a lost connection is discarded from the pool and answered
503, and the database functions' own SQLSTATEs reach the caller as ``StatementError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import greenlet_spawn

from .db import MAX_ATTEMPTS, RETRY_SQLSTATES, is_unavailable, pause_before_retry
from .errors import DatabaseUnavailable


class StatementError(Exception):
    """The database refused the statement with ``sqlstate`` (e.g. a function's RAISE)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class KeyedGate:
    """At most ``capacity`` holders at a time per key, in this process; the others wait their
    turn (FIFO).

    Writes of one customer queue on the customer's row lock in the database anyway. Letting
    only a few of them per worker into the database at a time means the database sees a few
    waiters per worker instead of one per connection: a waiter costs nothing here, while in the
    database every commit wakes the waiters of the row. Two rather than one, so the next write
    is already in the database when the current one commits. Measured with 32 connections on
    one customer and two workers: 587 redemptions/s with no gate, 1,085 with one holder, about
    1,350 with two, three or four.
    """

    def __init__(self, timeout: float, capacity: int = 2) -> None:
        self.timeout = timeout
        self.capacity = capacity
        self._gates: dict[Hashable, tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Wait at most ``timeout`` seconds for the key, as for a lock in the database."""
        entry = self._gates.get(key)
        if entry is None:
            entry = self._gates[key] = (asyncio.Semaphore(self.capacity), [0])
        slots, users = entry
        users[0] += 1
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await slots.acquire()
            except TimeoutError:
                raise DatabaseUnavailable("timed out waiting for the customer's lock") from None
            try:
                yield
            finally:
                slots.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._gates[key]

    def __len__(self) -> int:
        return len(self._gates)


class Direct:
    def __init__(self, engine: AsyncEngine, lock_timeout_seconds: float) -> None:
        self.engine = engine
        self.gate = KeyedGate(lock_timeout_seconds)

    async def fetchrow(
        self,
        sql: str,
        *args: Any,
        retry_on_unique: bool = False,
        one_at_a_time: Hashable | None = None,
    ) -> asyncpg.Record | None:
        """Run one statement in a transaction of its own and return its first row.

        With ``retry_on_unique`` a unique-key race between two new rows is retried too: the
        second attempt sees the row the other one committed. Of the statements with the same
        ``one_at_a_time`` key, only the gate's capacity run at a time in this process
        (``KeyedGate``).
        """
        if one_at_a_time is None:
            return await self._fetchrow(sql, args, retry_on_unique)
        async with self.gate.hold(one_at_a_time):
            return await self._fetchrow(sql, args, retry_on_unique)

    async def _fetchrow(
        self, sql: str, args: tuple[Any, ...], retry_on_unique: bool
    ) -> asyncpg.Record | None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._fetchrow_once(sql, args)
            except asyncpg.PostgresError as error:
                state = error.sqlstate or ""
                retry = state in RETRY_SQLSTATES or (retry_on_unique and state == "23505")
                if not retry or attempt == MAX_ATTEMPTS:
                    if is_unavailable(error):
                        raise DatabaseUnavailable(str(error)) from error
                    raise StatementError(state, str(error)) from error
            await pause_before_retry(attempt)
        raise AssertionError("unreachable")

    async def _fetchrow_once(self, sql: str, args: tuple[Any, ...]) -> asyncpg.Record | None:
        try:
            # The pool's connection itself, without SQLAlchemy's Connection around it: a
            # quarter of the CPU of engine.connect() for the checkout and the return.
            pooled = await self.engine.raw_connection()
            driver: asyncpg.Connection = pooled.driver_connection
            try:
                row: asyncpg.Record | None = await driver.fetchrow(sql, *args)
            except asyncpg.PostgresError as error:
                if is_unavailable(error):
                    await greenlet_spawn(pooled.invalidate)
                else:
                    await greenlet_spawn(pooled.close)
                raise
            except BaseException:
                # The connection's state is unknown (closed, timed out, cancelled half-way):
                # it must not go back to the pool.
                await asyncio.shield(greenlet_spawn(pooled.invalidate))
                raise
            # Returning it may close it (past the pool's size), which awaits the driver.
            await greenlet_spawn(pooled.close)
            return row
        except Exception as error:
            # The statement's own refusals go to _fetchrow; no connection, a lost one, or no
            # free one in the pool is a 503.
            if isinstance(error, asyncpg.PostgresError) or not is_unavailable(error):
                raise
            raise DatabaseUnavailable(str(error)) from error
