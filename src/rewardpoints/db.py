"""Engines and transactions, and which database errors mean "retry" or "unavailable"."""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from .config import Settings
from .errors import DatabaseUnavailable
from .metrics import POOL_WAITING

T = TypeVar("T")
Clock = Callable[[], datetime]


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
# ... and those that mean "the database is not usable right now", whatever the request.
UNAVAILABLE_SQLSTATE_PREFIXES = (
    "08",  # connection exception
    "28",  # the server refuses the service's role or password
    "3D000",  # the service's database does not exist (dropped, or not created yet)
    "25006",  # the database takes no writes: a standby, or one set read-only
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "55P03",  # a lock not had in time
    "57",  # operator intervention: shutdown, crash, statement cancelled or timed out
    "58",  # system error: the server's own I/O failed
)
# How often a transaction (or a statement sent straight to the driver, direct.py) is tried.
MAX_ATTEMPTS = 5


async def pause_before_retry(attempt: int) -> None:
    """Back off a little more after each failed attempt."""
    await asyncio.sleep(0.005 * attempt)


def create_engine(
    settings: Settings,
    *,
    clock: Clock | None = None,
    url: str | None = None,
    through_pooler: bool | None = None,
) -> AsyncEngine:
    """The service's engine (of ``url``, else the database's), through the configured pooler
    unless ``through_pooler`` says otherwise (the primary itself beside it). ``clock`` is for
    tests only: the database functions read their time from it instead of the database's clock
    (see ``_set_clock_at_checkout``)."""
    url = url or settings.database_url
    if through_pooler is None:
        through_pooler = settings.database_pooler == "transaction"
    if url is None:
        raise ValueError("no database URL: the embedded cluster provides one (cli.py)")
    engine = create_async_engine(
        make_url(url),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_timeout=settings.database_pool_timeout_seconds,
        connect_args=connect_args(settings, through_pooler=through_pooler),
    )
    _replace_closed_connections(engine)
    if through_pooler:
        _THROUGH_POOLER.add(engine.sync_engine)
    if clock is not None:
        _set_clock_at_checkout(engine, clock)
    return engine


# The engines whose connections go through a pooler in transaction mode (connect_args).
_THROUGH_POOLER: weakref.WeakSet[Engine] = weakref.WeakSet()


def connect_args(settings: Settings, *, through_pooler: bool | None = None) -> dict[str, Any]:
    """How each connection is opened.

    Directly, the session is the service's own: its timeouts are set at connect. Through a
    pooler in transaction mode (``REWARDPOINTS_DATABASE_POOLER=transaction``) each transaction
    may run on another of the pooler's server connections, so nothing may live in the session.
    PgBouncer refuses startup parameters other than the few it tracks, so the timeouts are left
    to the database role (docs/scaling.md); asyncpg sends no named statement of its own
    (``statement_cache_size=0``: it parses each statement again in the same round trip) and
    SQLAlchemy's statements get names no other client uses and are not cached. Advisory locks
    are transaction-scoped (``pg_try_advisory_xact_lock``) and ``SET LOCAL`` lasts the
    transaction, so both hold through the pooler.
    """
    application = {"application_name": "rewardpoints"}
    if through_pooler is None:
        through_pooler = settings.database_pooler == "transaction"
    if through_pooler:
        return {
            "timeout": 5,
            "command_timeout": 60,
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": _statement_name,
            "server_settings": application,
        }
    return {
        "timeout": 5,
        "command_timeout": 60,
        "server_settings": {
            "lock_timeout": str(settings.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(
                settings.database_idle_in_transaction_timeout_ms
            ),
            **application,
        },
    }


def _statement_name() -> str:
    return f"__rewardpoints_{uuid.uuid4().hex}__"


def _replace_closed_connections(engine: AsyncEngine) -> None:
    """Replace a pooled connection the server has closed before it is handed out.

    SQLAlchemy's ``pool_pre_ping`` would cost three round trips per checkout with asyncpg
    (BEGIN, an empty statement, ROLLBACK). asyncpg learns of a closed connection when the
    server's goodbye (a restart, ``pg_terminate_backend``, an idle timeout) or the socket's
    end arrives, which the event loop reads while the connection waits in the pool; so asking
    the driver is as good a check, and free. A connection that dies in the middle of a request
    fails that request (503), as it would with a ping, and is not reused.

    The goodbye and the socket's end may be read in different turns of the event loop; in
    between, the driver still calls the connection open but refuses every statement on it,
    before sending it. A request that takes such a connection loses nothing either: its
    statement is sent again on another connection (``refused_before_sending``, in the fast
    path and ``run_transaction``), and elsewhere it is answered 503.
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("the server closed this connection")


def _set_clock_at_checkout(engine: AsyncEngine, clock: Clock) -> None:
    """Tests' clock: each checkout reads it and sets ``rewardpoints.now`` for the session,
    which the database functions read instead of their clock (rewardpoints_now.sql). Set
    through the same path the service's own calls take; production never sets it."""

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        await_only(
            driver.execute(
                "SELECT set_config('rewardpoints.now', $1, false)",
                clock().astimezone(UTC).isoformat(),
            )
        )


@asynccontextmanager
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection. Failing to get one is the database being unavailable, whatever
    the server answered (starting up, shut to connections, too many clients, ...)."""
    conn = engine.connect()
    POOL_WAITING.inc()
    try:
        await conn.start()
    except DBAPIError as error:
        raise DatabaseUnavailable(f"no connection to the database: {error.orig}") from error
    finally:
        POOL_WAITING.dec()
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One write transaction."""
    async with connection(engine) as conn, conn.begin():
        yield conn


@asynccontextmanager
async def autocommit_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose every statement commits by itself (for single-statement commands).

    Through a pooler in transaction mode, a transaction instead: SQLAlchemy prepares a
    statement, then runs it, and outside a transaction the pooler may send the two to
    different server connections."""
    async with connection(engine) as conn:
        if engine.sync_engine in _THROUGH_POOLER:
            async with conn.begin():
                yield conn
            return
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


def single_read(engine: AsyncEngine) -> Any:
    """A connection for one read statement: without BEGIN/ROLLBACK round trips."""
    return autocommit_connection(engine)


@asynccontextmanager
async def read_transaction(
    engine: AsyncEngine, *, snapshot: bool = False
) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction; with ``snapshot`` every statement sees the same data."""
    async with connection(engine) as conn:
        if snapshot:
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


def database_clock() -> Any:
    """The database's clock, as reads see it (rewardpoints_read_now.sql), as an expression
    for a statement: the one clock of every time the service records."""
    return func.rewardpoints_read_now()


async def database_now(conn: AsyncConnection) -> datetime:
    """The database's clock read now, for a time the service needs before its statement."""
    now: datetime = (await conn.execute(select(database_clock()))).scalar_one()
    return now


def sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    for attr in ("sqlstate", "pgcode"):
        code = getattr(orig, attr, None)
        if code:
            return str(code)
    cause = getattr(orig, "__cause__", None)
    code = getattr(cause, "sqlstate", None)
    return str(code) if code else None


# Errors of the driver itself rather than of the server: a connection asyncpg can no longer
# use (closed, or its protocol in a state no statement can start from, as after the server's
# goodbye was read but not yet the connection's end). Either way the connection is broken.
DRIVER_ERRORS = (asyncpg.InterfaceError, asyncpg.InternalClientError)
# How asyncpg words its refusals to start an operation on a connection that is not ready for
# one (its protocol's _check_state and _set_state), raised before any byte of it is sent.
_NOT_SENT = ("cannot perform operation", "cannot switch to state ")


def driver_error(error: BaseException) -> BaseException:
    """The asyncpg exception behind ``error``, else ``error`` itself. SQLAlchemy's adapter
    raises its own exception from the driver's: wrapped in a ``DBAPIError`` by a Connection,
    bare where the pool opens a connection for the fast path (``engine.raw_connection``)."""
    found: BaseException = error
    if isinstance(error, DBAPIError) and error.orig is not None:
        found = error.orig
    if isinstance(found.__cause__, (asyncpg.PostgresError, *DRIVER_ERRORS)):
        found = found.__cause__
    return found


def refused_before_sending(error: BaseException) -> bool:
    """Whether the driver refused to send the statement at all because its connection was
    broken before the statement came to it: nothing of it reached the database, so it is safe
    to run it (or its whole transaction) again on another connection. A connection the server
    ended while it waited in the pool does this when the server's goodbye has been read but
    not yet the connection's end, so the pool still took it for open (db.create_engine)."""
    cause = driver_error(error)
    return isinstance(cause, DRIVER_ERRORS) and str(cause).startswith(_NOT_SENT)


def is_unavailable(error: BaseException) -> bool:
    """Whether an error means the database is unreachable, broken, locked too long or
    overloaded: a failure of the database rather than of the request (503, not 500)."""
    if isinstance(error, (DatabaseUnavailable, PoolTimeout)):  # PoolTimeout: no free connection
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    driver = driver_error(error)
    if isinstance(driver, (ConnectionError, TimeoutError, OSError, *DRIVER_ERRORS)):
        return True
    if isinstance(driver, asyncpg.PostgresError):
        return (driver.sqlstate or "").startswith(UNAVAILABLE_SQLSTATE_PREFIXES)
    if isinstance(error, DBAPIError):
        state = sqlstate(error)
        if state and state.startswith(UNAVAILABLE_SQLSTATE_PREFIXES):
            return True
        cause = getattr(error.orig, "__cause__", None)
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
    """Run ``body`` in one transaction, retrying on deadlock or serialisation failure, and on
    a connection that refused a statement before sending it (``refused_before_sending``).

    With ``retry_on_integrity`` a unique-key race (two new rows at once) is retried as well:
    the second attempt sees the committed row and answers as the ledger rules say.
    """
    transaction = write_transaction if write else read_transaction
    hook = _hook.get() if write else None
    if single_statement and hook is None:
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
            retry = sqlstate(error) in RETRY_SQLSTATES or refused_before_sending(error)
            if not retry or attempt == MAX_ATTEMPTS:
                if is_unavailable(error):
                    raise DatabaseUnavailable(str(error.orig)) from error
                raise
        except (ConnectionError, TimeoutError, OSError, PoolTimeout) as error:
            raise DatabaseUnavailable(str(error)) from error
        await pause_before_retry(attempt)
    raise AssertionError("unreachable")
