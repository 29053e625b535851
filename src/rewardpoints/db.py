"""Engines and transactions, and which database errors mean "retry" or "unavailable"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import Settings
from .errors import DatabaseUnavailable

T = TypeVar("T")


class TransactionHook(Protocol):
    """Work a request adds to its write transactions (see idempotency.py)."""

    async def before(self, conn: AsyncConnection) -> None: ...
    async def after(self, conn: AsyncConnection, result: Any) -> None: ...
    def committed(self) -> None: ...


_hook: ContextVar[TransactionHook | None] = ContextVar(
    "rewardpoints_transaction_hook", default=None
)


@contextmanager
def transaction_hook(hook: TransactionHook) -> Iterator[None]:
    """Run ``hook`` in every write transaction started by ``run_transaction`` in this context."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)


def active_transaction_hook() -> TransactionHook | None:
    """The hook ``run_transaction`` would run in this context, if any."""
    return _hook.get()


# PostgreSQL SQLSTATEs that mean "try the whole transaction again".
RETRY_SQLSTATES = {"40001", "40P01"}
# ... and those that mean "the database is not usable right now".
UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P", "55P03", "57014")
# How often a transaction (or a statement sent straight to the driver, direct.py) is tried.
MAX_ATTEMPTS = 5


async def pause_before_retry(attempt: int) -> None:
    """Back off a little more after each failed attempt."""
    await asyncio.sleep(0.005 * attempt)


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url is None:
        raise ValueError("no database URL; `rewardpoints serve` sets the embedded cluster's")
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            url,
            connect_args={"timeout": settings.lock_timeout_ms / 1000},
            pool_size=settings.database_pool_size,
        )
        _configure_sqlite(engine, settings)
        return engine
    engine = create_async_engine(
        url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_timeout=settings.database_pool_timeout_seconds,
        connect_args={
            "timeout": 5,
            "command_timeout": 60,
            "server_settings": {
                "lock_timeout": str(settings.lock_timeout_ms),
                "idle_in_transaction_session_timeout": str(
                    settings.database_idle_in_transaction_timeout_ms
                ),
                "application_name": "rewardpoints",
            },
        },
    )
    _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: AsyncEngine) -> None:
    """Replace a pooled connection the server has closed before it is handed out.

    SQLAlchemy's ``pool_pre_ping`` would cost three round trips per checkout with asyncpg
    (BEGIN, an empty statement, ROLLBACK). asyncpg learns of a closed connection when the
    server's goodbye (a restart, ``pg_terminate_backend``, an idle timeout) or the socket's
    end arrives, which the event loop reads while the connection waits in the pool; so asking
    the driver is as good a check, and free. A connection that dies in the middle of a request
    fails that request (503), as it would with a ping, and is not reused.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("the server closed this connection")


def _configure_sqlite(engine: AsyncEngine, settings: Settings) -> None:
    """Let SQLAlchemy, not the driver, begin transactions, so writers can BEGIN IMMEDIATE."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.lock_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("rewardpoints_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One write transaction; on SQLite it takes the write lock at BEGIN (BEGIN IMMEDIATE)."""
    async with engine.connect() as conn:
        await conn.execution_options(rewardpoints_write=True)
        async with conn.begin():
            yield conn


@asynccontextmanager
async def autocommit_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose every statement commits by itself (for single-statement commands)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def single_read(engine: AsyncEngine) -> Any:
    """A connection for one read statement: without BEGIN/ROLLBACK round trips on PostgreSQL."""
    if engine.dialect.name == "postgresql":
        return autocommit_connection(engine)
    return read_transaction(engine)


@asynccontextmanager
async def read_transaction(
    engine: AsyncEngine, *, snapshot: bool = False
) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction; with ``snapshot`` every statement sees the same data.

    SQLite's deferred transactions already read one snapshot in WAL mode.
    """
    async with engine.connect() as conn:
        if snapshot and conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


def sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    for attr in ("sqlstate", "pgcode"):
        code = getattr(orig, attr, None)
        if code:
            return str(code)
    cause = getattr(orig, "__cause__", None)
    code = getattr(cause, "sqlstate", None)
    return str(code) if code else None


def is_unavailable(error: BaseException) -> bool:
    """Whether an error means the database is unreachable, locked too long or overloaded."""
    if isinstance(error, (DatabaseUnavailable, PoolTimeout)):  # PoolTimeout: no free connection
        return True
    if isinstance(error, (ConnectionError, TimeoutError, OSError, asyncpg.InterfaceError)):
        return True
    if isinstance(error, asyncpg.PostgresError):  # the driver's own, used directly
        return (error.sqlstate or "").startswith(UNAVAILABLE_SQLSTATE_PREFIXES)
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        state = sqlstate(error)
        if state and state.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
            return True
        message = str(error.orig).lower()
        if "database is locked" in message or "unable to open database" in message:
            return True
        orig = error.orig
        cause = getattr(orig, "__cause__", None)
        if isinstance(cause, (ConnectionError, TimeoutError, OSError)):
            return True
        name = type(cause).__name__ if cause is not None else ""
        if "Connection" in name or "CannotConnect" in name or "Interface" in name:
            return True
    return False


async def run_transaction(
    engine: AsyncEngine,
    body: Callable[[AsyncConnection], Awaitable[T]],
    *,
    write: bool = True,
    retry_on_integrity: bool = False,
    single_statement: bool = False,
) -> T:
    """Run ``body`` in one transaction, retrying on deadlock or serialisation failure.

    With ``retry_on_integrity`` a unique-key race (two new rows at once) is retried as well:
    the second attempt sees the committed row and answers as the ledger rules say.
    """
    transaction = write_transaction if write else read_transaction
    hook = _hook.get() if write else None
    if single_statement and hook is None and engine.dialect.name == "postgresql":
        # One statement is atomic by itself: no BEGIN and COMMIT round trips around it.
        transaction = autocommit_connection
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with transaction(engine) as conn:
                if hook is not None:
                    await hook.before(conn)
                result = await body(conn)
                if hook is not None:
                    await hook.after(conn, result)
            if hook is not None:
                hook.committed()
            return result
        except IntegrityError:
            if not retry_on_integrity or attempt == MAX_ATTEMPTS:
                raise
        except DBAPIError as error:
            if sqlstate(error) not in RETRY_SQLSTATES or attempt == MAX_ATTEMPTS:
                if is_unavailable(error):
                    raise DatabaseUnavailable(str(error.orig)) from error
                raise
        except (ConnectionError, TimeoutError, OSError, PoolTimeout) as error:
            raise DatabaseUnavailable(str(error)) from error
        await pause_before_retry(attempt)
    raise AssertionError("unreachable")
