"""Where the heavy reads go: a hot standby while it is fresh enough, else the primary.

The heavy reads (summaryBatch, the tenant-wide expiring points, the liability report and the
history pages) are the ones a standby can take off the primary. Balances, summaries and
writes stay on the primary, so a client always reads its own writes there. The standby's
lag is measured at most once a ``check_seconds`` (by the first read that needs it; the others
wait for that answer) and reported in ``/metrics``; a standby that is down, unreachable,
promoted away or behind by more than ``max_lag_seconds`` sends the reads to the primary until
it is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import is_unavailable
from .errors import DatabaseUnavailable
from .metrics import REPLICA_LAG

T = TypeVar("T")

log = logging.getLogger("rewardpoints")

# The standby's lag in seconds: 0 while it has replayed all it received and is receiving;
# else the age of the last transaction it replayed (its receiver gone, it falls behind by the
# time since). Infinity if it has replayed nothing yet; 0 on a server that is not a standby.
_LAG = text("""
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
         AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 'Infinity')
END::float8
""")
_LAG_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ReadSource:
    """The engine a heavy read runs on, and the standby's lag when it is the standby."""

    engine: AsyncEngine
    lag_seconds: float | None = None

    @property
    def name(self) -> str:
        return "primary" if self.lag_seconds is None else "replica"

    def headers(self) -> dict[str, str]:
        """Where the read was answered from, and how fresh that is: ``X-Read-Source:
        replica`` with ``X-Replica-Lag-Seconds``, or ``primary``."""
        headers = {"X-Read-Source": self.name}
        if self.lag_seconds is not None:
            headers["X-Replica-Lag-Seconds"] = f"{self.lag_seconds:.3f}"
        return headers


@dataclass(slots=True)
class HeavyReads:
    primary: AsyncEngine
    replica: AsyncEngine | None = None
    max_lag_seconds: float = 10.0
    check_seconds: float = 1.0
    _lag: float | None = None  # None: unknown, or the standby could not be asked
    _checked_at: float = -math.inf
    _checking: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def source(self) -> ReadSource:
        if self.replica is None:
            return ReadSource(self.primary)
        if time.monotonic() - self._checked_at >= self.check_seconds:
            async with self._checking:
                if time.monotonic() - self._checked_at >= self.check_seconds:
                    await self._measure(self.replica)
        lag = self._lag
        if lag is not None and lag <= self.max_lag_seconds:
            return ReadSource(self.replica, lag)
        return ReadSource(self.primary)

    async def run(self, read: Callable[[AsyncEngine], Awaitable[T]]) -> tuple[T, ReadSource]:
        """``read`` on the standby (or the primary), and where it ran; a standby that cannot
        be reached hands it to the primary at once."""
        source = await self.source()
        try:
            return await read(source.engine), source
        except Exception as error:
            if not self._standby_failed(source, error):
                raise
        source = self.unavailable()
        return await read(source.engine), source

    async def stream(
        self, make: Callable[[AsyncEngine], AsyncGenerator[T, None]]
    ) -> tuple[AsyncGenerator[T, None], T | None, ReadSource]:
        """A streamed read started: its generator, its first item (read before answering, so
        an unreachable database is a 503, not a broken 200) and where it runs. A standby that
        cannot be reached hands it to the primary at once; the generator is closed if the
        first item fails."""
        (items, first), source = await self.run(lambda engine: _started(make(engine)))
        return items, first, source

    def _standby_failed(self, source: ReadSource, error: Exception) -> bool:
        unreachable = isinstance(error, DatabaseUnavailable) or is_unavailable(error)
        return source.lag_seconds is not None and unreachable

    def unavailable(self) -> ReadSource:
        """The standby failed a read: the primary, for this read and until the next check."""
        if self._lag is not None:
            log.warning("read replica failed a read, heavy reads go to the primary")
        self._lag = None
        self._checked_at = time.monotonic()
        REPLICA_LAG.set(math.nan)
        return ReadSource(self.primary)

    async def _measure(self, replica: AsyncEngine) -> None:
        before = self._lag
        try:
            async with asyncio.timeout(_LAG_TIMEOUT_SECONDS), replica.connect() as conn:
                self._lag = float((await conn.execute(_LAG)).scalar_one())
        except Exception as error:  # noqa: BLE001 - any failure: the standby is not usable now
            self._lag = None
            if before is not None or self._checked_at == -math.inf:
                log.warning("read replica unavailable, heavy reads go to the primary: %s", error)
        else:
            if before is None and self._checked_at != -math.inf:
                log.info("read replica available again (lag %.3f s)", self._lag)
        self._checked_at = time.monotonic()
        REPLICA_LAG.set(self._lag if self._lag is not None else math.nan)

    async def dispose(self) -> None:
        if self.replica is not None:
            await self.replica.dispose()


async def _started(items: AsyncGenerator[T, None]) -> tuple[AsyncGenerator[T, None], T | None]:
    """``items`` and its first item; ``items`` closed if that fails."""
    try:
        return items, await anext(items, None)
    except BaseException:
        await items.aclose()
        raise
