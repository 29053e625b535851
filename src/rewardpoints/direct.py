"""The busiest statements, sent straight through asyncpg on PostgreSQL.

A balance read, an addPoints and a redeemPoints are one statement each on PostgreSQL (the last
two call the database functions rewardpoints_add and rewardpoints_redeem). Executed through
SQLAlchemy, such a statement costs about three times the CPU of the statement itself in asyncpg: the
compiled-statement cache lookup, parameter and result processing, and the adapter's own
prepared-statement bookkeeping. Here the connection still comes from the engine's pool (one pool,
one set of limits, disposed with the engine), but the statement goes to the driver, which
prepares it once per connection and keeps it.

Without a transaction around it each statement commits by itself, which is what these
single-statement commands need. Errors come out as the rest of the ledger's do: a deadlock or
serialisation failure is retried, a lost or broken connection is discarded from the pool and
answered 503 (unless the driver refused the statement before sending it: then the statement
is sent again on another connection), and the database functions' own SQLSTATEs reach the
caller as ``StatementError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util.concurrency import greenlet_spawn

from .db import (
    MAX_ATTEMPTS,
    RETRY_SQLSTATES,
    is_unavailable,
    pause_before_retry,
    refused_before_sending,
)
from .errors import DatabaseUnavailable
from .metrics import POOL_WAITING

T = TypeVar("T")
R = TypeVar("R")


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

    def __init__(
        self,
        timeout: float,
        capacity: int = 2,
        refusal: str = "timed out waiting for the customer's lock",
    ) -> None:
        self.timeout = timeout
        self.capacity = capacity
        self.refusal = refusal
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
                raise DatabaseUnavailable(self.refusal) from None
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
    """Statements sent straight to the driver, on connections of the engine's pool.

    At most the pool's base size of them are out at a time in this process; the others wait
    here for one of those connections, as long as a checkout would wait for one. Past its base
    size the pool opens an overflow connection for a checkout and closes it again when it comes
    back, so under a steady load above the base size (a worker handed more clients than that by
    the kernel) each of these one-statement requests would pay for a connection of its own: a
    PostgreSQL backend started, authenticated and warmed up, then ended, for a statement of a
    millisecond. Measured with addPoints, 16 clients on two workers: with the pool at 10, 1,848
    requests/s in a run that opened 109 connections, 2,528 in one that opened none; with the pool
    at 4, 656-1,318 requests/s opening 443-732 connections per 8 s before, about 1,900 opening
    none after. The overflow stays for the requests that hold a connection for longer (the
    ORM's transactions, the streamed reads). The cost: statements waiting in the database for
    a row lock hold their turns meanwhile, so a few customers locked from outside (two turns
    each, ``KeyedGate``) can make the others wait, up to the lock timeout.
    """

    def __init__(self, engine: AsyncEngine, lock_timeout_seconds: float) -> None:
        self.engine = engine
        self.gate = KeyedGate(lock_timeout_seconds)
        pool = engine.pool
        if not isinstance(pool, QueuePool):  # db.create_engine's pool on PostgreSQL
            raise TypeError(f"the fast path needs a QueuePool, not {type(pool).__name__}")
        # Statements run again after a deadlock, a serialisation failure or a unique-key race,
        # for the tests and for profiling.
        self.retries = 0
        self._connections = KeyedGate(
            pool.timeout(),
            capacity=pool.size(),
            refusal=f"no database connection was free within {pool.timeout():g} s",
        )

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

    async def fetch(
        self, sql: str, *args: Any, retry_on_unique: bool = False
    ) -> list[asyncpg.Record]:
        """Run one statement in a transaction of its own and return all its rows (retried as
        ``fetchrow``)."""
        rows: list[asyncpg.Record] = await self._run("fetch", sql, args, retry_on_unique)
        return rows

    async def _fetchrow(
        self, sql: str, args: tuple[Any, ...], retry_on_unique: bool
    ) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._run("fetchrow", sql, args, retry_on_unique)
        return row

    async def _run(
        self, method: str, sql: str, args: tuple[Any, ...], retry_on_unique: bool
    ) -> Any:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._run_once(method, sql, args)
            except asyncpg.PostgresError as error:
                state = error.sqlstate or ""
                retry = state in RETRY_SQLSTATES or (retry_on_unique and state == "23505")
                if not retry or attempt == MAX_ATTEMPTS:
                    if is_unavailable(error):
                        raise DatabaseUnavailable(str(error)) from error
                    raise StatementError(state, str(error)) from error
            except DatabaseUnavailable:
                raise
            except Exception as error:
                # No connection, a lost one or a broken one is a 503; but a statement the
                # driver refused before sending it is sent again, on another connection.
                if not is_unavailable(error):
                    raise
                if not refused_before_sending(error) or attempt == MAX_ATTEMPTS:
                    raise DatabaseUnavailable(str(error)) from error
            self.retries += 1
            await pause_before_retry(attempt)
        raise AssertionError("unreachable")

    async def _run_once(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        """``driver.<method>(sql, *args)`` on a connection borrowed from the pool."""
        async with self._connections.hold(None):
            return await self._run_on_pooled(method, sql, args)

    async def _run_on_pooled(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        # The pool's connection itself, without SQLAlchemy's Connection around it: a quarter
        # of the CPU of engine.connect() for the checkout and the return.
        POOL_WAITING.inc()
        try:
            pooled = await self.engine.raw_connection()
        except Exception as error:
            # No connection, whatever the server said (starting, shut to connections, no
            # such database or role): the database is not usable now.
            raise DatabaseUnavailable(f"no connection to the database: {error}") from error
        finally:
            POOL_WAITING.dec()
        driver: asyncpg.Connection = pooled.driver_connection
        try:
            result = await getattr(driver, method)(sql, *args)
        except asyncpg.PostgresError as error:
            if is_unavailable(error):
                await greenlet_spawn(pooled.invalidate)
            else:
                await greenlet_spawn(pooled.close)
            raise
        except BaseException:
            # The connection's state is unknown (closed, broken, timed out, cancelled
            # half-way): it must not go back to the pool.
            await asyncio.shield(greenlet_spawn(pooled.invalidate))
            raise
        # Returning it may close it (past the pool's size), which awaits the driver.
        await greenlet_spawn(pooled.close)
        return result


class Coalesced(Generic[T, R]):
    """Requests of one process that are waiting at the same moment, sent as one statement.

    Under load many requests wait for the database at once, each paying a round trip: the
    statement sent, its answer received and parsed, in the worker and in a backend; a write
    pays for a commit too, which waits for the WAL to reach the disk. Here a request joins the
    others waiting in this process and at most ``max_in_flight`` statements are out at a time:
    a request that arrives while they are busy waits for the next one, which carries every
    request that queued meanwhile (up to ``max_batch``), in one round trip (``many``, with the
    items in arrival order, one result each in that order). A request that finds the database
    idle goes out at once, alone (``single``), so an unloaded service answers as fast as
    without this.

    Every statement is sent after each of the requests it carries was made, so a read never
    sees the database as it was before it was asked: an answer acknowledged to one client is
    seen by every read that another client asks for later.

    A statement for several requests that fails with one of ``one_by_one_on`` is followed by
    each of them alone, so each gets the answer it would have got without the others (a write
    of one that the database refuses does not fail the rest). With any other error, every
    request of the statement gets it: a database that cannot be reached is not asked again
    once per request. A result of ``many`` for which ``again_alone`` is true (a request the
    statement left undone) is not an answer: that request is sent again, alone.
    """

    def __init__(
        self,
        single: Callable[[T], Awaitable[R]],
        many: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_in_flight: int = 2,
        max_batch: int = 64,
        one_by_one_on: tuple[type[Exception], ...] = (),
        again_alone: Callable[[R], bool] | None = None,
    ) -> None:
        self._single = single
        self._many = many
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.one_by_one_on = one_by_one_on
        self.again_alone = again_alone
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._scheduled = False
        # Statements sent and requests answered by them, and requests sent again alone (their
        # statement failed, or left them undone), for the tests and for profiling.
        self.statements = 0
        self.requests = 0
        self.alone = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and len(self._in_flight) < self.max_in_flight:
            # After the callbacks already due: requests that arrived together leave together.
            self._scheduled = True
            loop.call_soon(self._send)

    def _send(self) -> None:
        self._scheduled = False
        live = [entry for entry in self._pending[: self.max_batch] if not entry[1].done()]
        del self._pending[: self.max_batch]
        if not live:
            if self._pending:
                self._schedule(asyncio.get_running_loop())
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._answer(live))
        self._in_flight.add(task)
        task.add_done_callback(self._sent)
        if self._pending:  # more than one statement's worth waiting
            self._schedule(loop)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._pending:
            self._schedule(asyncio.get_running_loop())

    async def _answer(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.statements += 1
        self.requests += len(batch)
        try:
            if len(batch) == 1:
                results = [await self._single(batch[0][0])]
            else:
                results = await self._many([item for item, _ in batch])
            answered = list(zip(batch, results, strict=True))
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            if isinstance(error, self.one_by_one_on) and len(batch) > 1:
                await self._one_by_one(batch)
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        again = []
        for (item, future), result in answered:
            if len(batch) > 1 and self.again_alone is not None and self.again_alone(result):
                again.append((item, future))
            elif not future.done():
                future.set_result(result)
        if again:
            await self._one_by_one(again)

    async def _one_by_one(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        async def alone(item: T, future: asyncio.Future[R]) -> None:
            try:
                result = await self._single(item)
            except Exception as error:
                if not future.done():
                    future.set_exception(error)
            else:
                if not future.done():
                    future.set_result(result)

        waiting = [(item, future) for item, future in batch if not future.done()]
        self.alone += len(waiting)
        try:
            await asyncio.gather(*(alone(item, future) for item, future in waiting))
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
