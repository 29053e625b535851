"""The ledger: every rule of CONTRACT.md section 2, one transaction per command.

Each write command locks the customer's account row first (``SELECT ... FOR UPDATE`` on
PostgreSQL; ``BEGIN IMMEDIATE`` serialises all writers on SQLite), so no two writes for one
customer interleave, while writes for different customers run in parallel on PostgreSQL.
The transaction commits before the command returns, so the caller answers 2xx only for a
committed write.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Row,
    Select,
    Text,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    null,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .config import Site
from .db import active_transaction_hook, read_transaction, run_transaction, single_read, sqlstate
from .direct import Coalesced, Direct, KeyedGate, StatementError
from .errors import (
    CustomerExists,
    CustomerNotFound,
    EntryConflict,
    InsufficientPoints,
    InvalidRequest,
    OrderConflict,
    UnknownSite,
)
from .models import UTCDateTime, accounts, awarded_orders, lot_usages, lots, redemptions

Clock = Callable[[], datetime]

DEFAULT_ADD_DESCRIPTION = "points added"
DEFAULT_REDEEM_DESCRIPTION = "points redeemed"
# The end of a window of stored active points when no lot counts (no expiry ends it).
_FOREVER = datetime(9999, 12, 31, tzinfo=UTC)
STREAM_CHUNK_ROWS = 2000
# Emporix's refund when a redeemed coupon could not be issued: its exact text and validity.
CHARGEBACK_DESCRIPTION = "Chargeback - redeemed voucher could not be created."
CHARGEBACK_VALIDITY_MONTHS = 36


def utcnow() -> datetime:
    return datetime.now(UTC)


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later, the day clamped to the month's end (Jan 31 + 1 = Feb 28/29)."""
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


@dataclass(frozen=True, slots=True)
class NewLot:
    points: int
    id: str | None = None
    reference_id: str | None = None
    description: str | None = None
    valid_until: datetime | None = None

    def fingerprint(self, customer_id: str) -> str:
        valid_until = self.valid_until.astimezone(UTC).isoformat() if self.valid_until else None
        return _digest(
            ["lot", customer_id, self.points, self.reference_id, self.description, valid_until]
        )


@dataclass(frozen=True, slots=True)
class NewRedemption:
    points: int
    id: str | None = None
    description: str | None = None

    def fingerprint(self, customer_id: str) -> str:
        return _digest(["redemption", customer_id, self.points, self.description])


@dataclass(slots=True)
class Lot:
    id: str
    reference_id: str | None
    description: str
    points: int
    used_points: int
    created_at: datetime
    valid_until: datetime
    all_points_after_creation: int
    used_with: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Redemption:
    id: str
    description: str
    points: int
    created_at: datetime
    all_points_after_creation: int


@dataclass(slots=True)
class CustomerSummary:
    customer_id: str
    active_points: int
    lots: list[Lot]
    redemptions: list[Redemption]


@dataclass(frozen=True, slots=True)
class AwardedOrder:
    order_id: str
    customer_id: str
    points: int
    lot_id: str | None
    created: bool  # False: the order had been awarded before, and nothing was added now


@dataclass(slots=True)
class BatchExport:
    """How summaryBatch reads a tenant on PostgreSQL (documents.py): in ranges of
    ``range_customers`` customers, on up to ``connections`` connections at once.

    An export takes one connection and as many more as it can use and are free: the exports of
    one process together hold at most ``connections - 1`` more than one each, so they cannot
    wait for each other's connections, and a second export at the same time reads on one.

    At most ``exports`` run at once: an export holds its connection for as long as its client
    takes to read it, so many slow ones could otherwise hold the whole pool. One more waits for
    a turn, ``wait_seconds`` at most, and is then refused as the database being busy.
    """

    connections: int = 2
    range_customers: int = 2000
    exports: int = 4
    wait_seconds: float = 10.0
    _extra_in_use: int = 0
    _turns: KeyedGate = field(init=False)

    def __post_init__(self) -> None:
        self._turns = KeyedGate(
            self.wait_seconds,
            capacity=self.exports,
            refusal=f"{self.exports} summaryBatch exports are running;"
            f" none ended within {self.wait_seconds:g} s",
        )

    def turn(self) -> AbstractAsyncContextManager[None]:
        """One of the ``exports`` turns, held until the block ends."""
        return self._turns.hold(None)

    @contextmanager
    def claim(self, wanted: int) -> Iterator[int]:
        """As many extra connections as are free, up to ``wanted``, until the block ends."""
        taken = max(0, min(wanted, self.connections - 1 - self._extra_in_use))
        self._extra_in_use += taken
        try:
            yield taken
        finally:
            self._extra_in_use -= taken


@dataclass(slots=True)
class StreamSlots:
    """At most ``limit`` summaries streamed at once by one process (documents.py). A streamed
    summary holds its connection for as long as its client takes to read it, so slow clients,
    a customer's own among them, could otherwise hold the whole pool; a summary that finds no
    slot free is built whole, as a short one is, and its connection goes back at once."""

    limit: int = 4
    _in_use: int = 0

    @contextmanager
    def claim(self) -> Iterator[bool]:
        """Whether a slot was free; it is held until the block ends."""
        taken = int(self._in_use < self.limit)
        self._in_use += taken
        try:
            yield bool(taken)
        finally:
            self._in_use -= taken


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def active_points(lot_list: Sequence[Lot], now: datetime) -> int:
    return sum(lot.points - lot.used_points for lot in lot_list if lot.valid_until > now)


class Ledger:
    def __init__(
        self,
        engine: AsyncEngine,
        sites: dict[str, Site],
        clock: Clock = utcnow,
        *,
        lock_timeout_seconds: float = 5.0,
        batch_export: BatchExport | None = None,
        summary_stream_entries: int = 1000,
        summary_streams: int = 4,
        write_statements: int = 2,
    ) -> None:
        self.engine = engine
        self.batch_export = batch_export or BatchExport()
        # A customer with more lots, or more redemptions, than this gets its summary streamed from
        # PostgreSQL (documents.py) rather than built whole first.
        self.summary_stream_entries = summary_stream_entries
        self.summary_streams = StreamSlots(summary_streams)
        self.sites = sites
        self.clock = clock
        # On PostgreSQL, add and redeem run as one call of a database function (migration
        # 0004) holding the customer's lock for one round trip; with the real clock the
        # function reads the time itself, under the lock.
        self._in_database = engine.dialect.name == "postgresql"
        self._database_clock = clock is utcnow
        # ... and those calls and the balance read go straight to the driver (direct.py).
        self._direct = Direct(engine, lock_timeout_seconds) if self._in_database else None
        # ... the balance reads waiting at the same moment as one statement, and the
        # redemptions, and the additions, each kind in one transaction (direct.py, migration
        # 0009).
        self._balances: Coalesced[tuple[str, str], int | None] | None = None
        self._redemptions: Coalesced[tuple[Any, ...], tuple[Any, Any]] | None = None
        self._additions: Coalesced[tuple[Any, ...], tuple[Any, Any]] | None = None
        if self._direct is not None:
            self._balances = Coalesced(self._one_balance, self._many_balances)
            self._redemptions = self._coalesced_writes(
                _REDEEM_SQL, _REDEEM_MANY_SQL, write_statements
            )
            self._additions = self._coalesced_writes(_ADD_SQL, _ADD_MANY_SQL, write_statements)

    def site(self, site_code: str) -> Site:
        try:
            return self.sites[site_code]
        except KeyError:
            raise UnknownSite(site_code) from None

    # ---- reads -------------------------------------------------------------------------

    async def balance(self, tenant: str, customer_id: str) -> int:
        if self._balances is not None:
            balance = await self._balances.submit((tenant, customer_id))
            if balance is None:
                raise CustomerNotFound(customer_id)
            return balance
        now = self.clock()
        open_points = (
            select(func.coalesce(func.sum(lots.c.points - lots.c.used_points), 0))
            .where(_open_lots_of(tenant, customer_id, now))
            .scalar_subquery()
        )
        query = select(open_points).where(
            accounts.c.tenant == tenant, accounts.c.customer_id == customer_id
        )
        async with single_read(self.engine) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise CustomerNotFound(customer_id)
        return int(row[0])

    async def _one_balance(self, key: tuple[str, str]) -> int | None:
        assert self._direct is not None
        row = await self._direct.fetchrow(_BALANCE_SQL, *key, self.clock())
        return None if row is None else int(row[0])

    async def _many_balances(self, keys: list[tuple[str, str]]) -> list[int | None]:
        assert self._direct is not None
        tenants = [tenant for tenant, _ in keys]
        customer_ids = [customer_id for _, customer_id in keys]
        rows = await self._direct.fetch(_BALANCES_SQL, tenants, customer_ids, self.clock())
        return [None if row[0] is None else int(row[0]) for row in rows]

    async def summary(self, tenant: str, customer_id: str) -> CustomerSummary:
        now = self.clock()
        async with read_transaction(self.engine, snapshot=True) as conn:
            exists = (
                await conn.execute(
                    select(accounts.c.customer_id).where(
                        accounts.c.tenant == tenant, accounts.c.customer_id == customer_id
                    )
                )
            ).first()
            if exists is None:
                raise CustomerNotFound(customer_id)
            lot_rows = await conn.execute(
                select(*_LOT_COLUMNS, lot_usages.c.redemption_id)
                .select_from(lots.outerjoin(lot_usages, _usage_join()))
                .where(lots.c.tenant == tenant, lots.c.customer_id == customer_id)
                .order_by(
                    lots.c.created_at,
                    lots.c.id,
                    lot_usages.c.created_at,
                    lot_usages.c.redemption_id,
                )
            )
            lot_list = _collect_lots(lot_rows)
            redemption_rows = await conn.execute(
                select(*_REDEMPTION_COLUMNS)
                .where(redemptions.c.tenant == tenant, redemptions.c.customer_id == customer_id)
                .order_by(redemptions.c.created_at, redemptions.c.id)
            )
            redemption_list = [Redemption(*row) for row in redemption_rows]
        return CustomerSummary(customer_id, active_points(lot_list, now), lot_list, redemption_list)

    async def stream_summaries(self, tenant: str) -> AsyncIterator[CustomerSummary]:
        """Every customer of the tenant, ordered by id, read from one server-side cursor.

        Memory holds one customer at a time plus one chunk of rows, whatever the tenant's size.
        """
        now = self.clock()
        async with read_transaction(self.engine, snapshot=True) as conn:
            result = await conn.stream(_batch_query(tenant))
            current: CustomerSummary | None = None
            last_lot: Lot | None = None
            async for chunk in result.partitions(STREAM_CHUNK_ROWS):
                for row in chunk:
                    customer_id, kind = row.customer_id, row.kind
                    if current is None or current.customer_id != customer_id:
                        if current is not None:
                            current.active_points = active_points(current.lots, now)
                            yield current
                        current = CustomerSummary(customer_id, 0, [], [])
                        last_lot = None
                    if kind == _KIND_LOT:
                        if last_lot is None or last_lot.id != row.id:
                            last_lot = Lot(
                                row.id,
                                row.reference_id,
                                row.description,
                                row.points,
                                row.used_points,
                                row.created_at,
                                row.valid_until,
                                row.all_points_after_creation,
                            )
                            current.lots.append(last_lot)
                        if row.used_by is not None:
                            last_lot.used_with.append(row.used_by)
                    elif kind == _KIND_REDEMPTION:
                        current.redemptions.append(
                            Redemption(
                                row.id,
                                row.description,
                                row.points,
                                row.created_at,
                                row.all_points_after_creation,
                            )
                        )
            if current is not None:
                current.active_points = active_points(current.lots, now)
                yield current

    # ---- writes ------------------------------------------------------------------------

    async def create_customer(
        self, tenant: str, customer_id: str, start: NewLot | None, site_code: str
    ) -> None:
        site = self.site(site_code)
        now = self.clock()
        prepared = self._prepare_lot(start, customer_id, site, now) if start else None

        async def body(conn: AsyncConnection) -> None:
            created = await conn.execute(
                _insert_ignore(conn, accounts)
                .values(tenant=tenant, customer_id=customer_id, created_at=now)
                .returning(accounts.c.customer_id)
            )
            if created.first() is None:
                raise CustomerExists(customer_id)
            if prepared is not None:
                await self._write_lot(conn, tenant, customer_id, prepared, now)

        await run_transaction(self.engine, body, retry_on_integrity=True)

    async def delete_customer(self, tenant: str, customer_id: str) -> None:
        async def body(conn: AsyncConnection) -> None:
            if not await _lock_account(conn, tenant, customer_id):
                raise CustomerNotFound(customer_id)
            await conn.execute(
                delete(lot_usages).where(
                    lot_usages.c.tenant == tenant,
                    lot_usages.c.lot_id.in_(
                        select(lots.c.id).where(
                            lots.c.tenant == tenant, lots.c.customer_id == customer_id
                        )
                    ),
                )
            )
            for table in (redemptions, lots):
                await conn.execute(
                    delete(table).where(
                        table.c.tenant == tenant, table.c.customer_id == customer_id
                    )
                )
            await conn.execute(
                delete(accounts).where(
                    accounts.c.tenant == tenant, accounts.c.customer_id == customer_id
                )
            )

        await run_transaction(self.engine, body)

    async def add_points(self, tenant: str, customer_id: str, lot: NewLot, site_code: str) -> str:
        """Credit a lot, creating the customer's entry when missing. Returns the lot's id."""
        site = self.site(site_code)
        if self._in_database:
            return await self._add_in_database(tenant, customer_id, lot, site)

        async def body(conn: AsyncConnection) -> str:
            # The clock is read while holding the customer's lock, so createdAt order is the
            # order in which writes were applied and allPointsAfterCreation a running balance.
            now = await self._lock_or_create_account(conn, tenant, customer_id)
            prepared = self._prepare_lot(lot, customer_id, site, now)
            return await self._write_lot(conn, tenant, customer_id, prepared, now)

        return await run_transaction(self.engine, body, retry_on_integrity=True)

    async def redeem_points(self, tenant: str, customer_id: str, redemption: NewRedemption) -> str:
        """Spend active lots oldest first. Returns the redemption's id."""
        description = redemption.description or DEFAULT_REDEEM_DESCRIPTION
        fingerprint = redemption.fingerprint(customer_id)
        if self._in_database:
            return await self._redeem_in_database(
                tenant, customer_id, redemption, description, fingerprint
            )

        async def body(conn: AsyncConnection) -> str:
            if not await _lock_account(conn, tenant, customer_id):
                raise CustomerNotFound(customer_id)
            now = self.clock()  # under the lock, as in add_points
            if redemption.id is not None and await _is_retry(
                conn, tenant, redemption.id, fingerprint
            ):
                return redemption.id
            redemption_id = redemption.id or str(uuid.uuid4())
            open_lots = (
                await conn.execute(
                    select(lots.c.id, lots.c.points - lots.c.used_points, lots.c.valid_until)
                    .where(_open_lots_of(tenant, customer_id, now))
                    .order_by(lots.c.created_at, lots.c.id)
                )
            ).all()
            available = sum(remaining for _, remaining, _ in open_lots)
            if available < redemption.points:
                raise InsufficientPoints(redemption.points, available)
            draws: list[dict[str, Any]] = []
            wanted = redemption.points
            for lot_id, remaining, _ in open_lots:
                if wanted == 0:
                    break
                take = min(wanted, remaining)
                draws.append({"b_lot": lot_id, "b_take": take})
                wanted -= take
            await conn.execute(
                insert(redemptions).values(
                    tenant=tenant,
                    id=redemption_id,
                    customer_id=customer_id,
                    description=description,
                    points=redemption.points,
                    created_at=now,
                    all_points_after_creation=available - redemption.points,
                    request_hash=fingerprint,
                )
            )
            await conn.execute(
                update(lots)
                .where(lots.c.tenant == tenant, lots.c.id == bindparam("b_lot"))
                .values(used_points=lots.c.used_points + bindparam("b_take", type_=BigInteger)),
                draws,
            )
            await conn.execute(
                insert(lot_usages),
                [
                    {
                        "tenant": tenant,
                        "lot_id": draw["b_lot"],
                        "redemption_id": redemption_id,
                        "points": draw["b_take"],
                        "created_at": now,
                    }
                    for draw in draws
                ],
            )
            # As rewardpoints_redeem: the earliest expiry before the draws (never late).
            first_expiry = min((until for _, _, until in open_lots), default=None)
            await _store_active_points(
                conn, tenant, customer_id, available - redemption.points, now, first_expiry
            )
            return redemption_id

        return await run_transaction(self.engine, body, retry_on_integrity=True)

    async def charge_back(self, tenant: str, customer_id: str, points: int, site_code: str) -> str:
        """Give back points whose coupon could not be issued, as Emporix does: a new lot with no
        reference-id, valid 36 months from its own creation. The redemption stays as it was."""
        site = self.site(site_code)

        async def body(conn: AsyncConnection) -> str:
            now = await self._lock_or_create_account(conn, tenant, customer_id)
            lot = NewLot(
                points,
                description=CHARGEBACK_DESCRIPTION,
                valid_until=add_months(now, CHARGEBACK_VALIDITY_MONTHS),
            )
            prepared = self._prepare_lot(lot, customer_id, site, now)
            return await self._write_lot(conn, tenant, customer_id, prepared, now)

        return await run_transaction(self.engine, body, retry_on_integrity=True)

    async def award_order(
        self,
        tenant: str,
        customer_id: str,
        order_id: str,
        points: int,
        description: str,
        site_code: str,
    ) -> AwardedOrder:
        """Credit an order's points exactly once: the order id is recorded in the same
        transaction as the lot, and an order recorded before adds nothing."""
        site = self.site(site_code)

        async def body(conn: AsyncConnection) -> AwardedOrder:
            now = await self._lock_or_create_account(conn, tenant, customer_id)
            lot_id = str(uuid.uuid4()) if points > 0 else None
            # A concurrent award of the same order waits here for the first to commit.
            recorded = await conn.execute(
                _insert_ignore(conn, awarded_orders)
                .values(
                    tenant=tenant,
                    order_id=order_id,
                    customer_id=customer_id,
                    points=points,
                    lot_id=lot_id,
                    created_at=now,
                )
                .returning(awarded_orders.c.order_id)
            )
            if recorded.first() is None:
                earlier = (
                    await conn.execute(
                        select(
                            awarded_orders.c.customer_id,
                            awarded_orders.c.points,
                            awarded_orders.c.lot_id,
                        ).where(
                            awarded_orders.c.tenant == tenant,
                            awarded_orders.c.order_id == order_id,
                        )
                    )
                ).one()
                if earlier.customer_id != customer_id:
                    raise OrderConflict(order_id)
                return AwardedOrder(
                    order_id, customer_id, int(earlier.points), earlier.lot_id, created=False
                )
            if lot_id is not None:
                lot = NewLot(points, id=lot_id, reference_id=order_id, description=description)
                prepared = self._prepare_lot(lot, customer_id, site, now)
                await self._write_lot(conn, tenant, customer_id, prepared, now)
            return AwardedOrder(order_id, customer_id, points, lot_id, created=True)

        return await run_transaction(self.engine, body, retry_on_integrity=True)

    async def _lock_or_create_account(
        self, conn: AsyncConnection, tenant: str, customer_id: str
    ) -> datetime:
        """Lock the customer's account, creating it when missing; the clock is read under the
        lock (as in add_points) and returned."""
        if await _lock_account(conn, tenant, customer_id):
            return self.clock()
        now = self.clock()
        created = await conn.execute(
            _insert_ignore(conn, accounts)
            .values(tenant=tenant, customer_id=customer_id, created_at=now)
            .returning(accounts.c.customer_id)
        )
        if created.first() is None:  # a concurrent write created it: wait our turn
            await _lock_account(conn, tenant, customer_id)
            now = self.clock()
        return now

    # ---- PostgreSQL: the same commands as one function call ---------------------------

    def _database_now(self) -> datetime | None:
        return None if self._database_clock else self.clock()

    async def _add_in_database(self, tenant: str, customer_id: str, lot: NewLot, site: Site) -> str:
        new_id = lot.id or str(uuid.uuid4())
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": new_id,
            "client_id": lot.id is not None,
            "reference": lot.reference_id,
            "description": lot.description or DEFAULT_ADD_DESCRIPTION,
            "points": lot.points,
            "valid_until": lot.valid_until,
            "months": site.validity_in_months,
            "hash": lot.fingerprint(customer_id),
            "now": self._database_now(),
        }
        if self._additions is not None and active_transaction_hook() is None:
            try:
                outcome, lot_id = await self._additions.submit(tuple(params.values()))
            except StatementError as error:
                _raise_add_refusal(error.sqlstate, new_id)
                raise
            _raise_add_refusal(outcome, new_id)  # answered by rewardpoints_add_many
            return str(lot_id)

        async def body(conn: AsyncConnection) -> str:
            try:
                _, lot_id = (await conn.execute(_ADD_CALL, params)).one()
            except DBAPIError as error:
                _raise_add_refusal(sqlstate(error), new_id)
                raise
            return str(lot_id)

        return await run_transaction(
            self.engine, body, retry_on_integrity=True, single_statement=True
        )

    async def _redeem_in_database(
        self,
        tenant: str,
        customer_id: str,
        redemption: NewRedemption,
        description: str,
        fingerprint: str,
    ) -> str:
        redemption_id = redemption.id or str(uuid.uuid4())
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": redemption_id,
            "client_id": redemption.id is not None,
            "description": description,
            "points": redemption.points,
            "hash": fingerprint,
            "now": self._database_now(),
        }

        def answer(outcome: str, available: int) -> str:
            if outcome == "not_found":
                raise CustomerNotFound(customer_id)
            if outcome == "conflict":
                raise EntryConflict(redemption_id)
            if outcome == "insufficient":
                raise InsufficientPoints(redemption.points, int(available))
            return redemption_id

        if self._redemptions is not None and active_transaction_hook() is None:
            return answer(*await self._redemptions.submit(tuple(params.values())))

        async def body(conn: AsyncConnection) -> str:
            outcome, available = (await conn.execute(_REDEEM_CALL, params)).one()
            return answer(outcome, available)

        return await run_transaction(
            self.engine, body, retry_on_integrity=True, single_statement=True
        )

    def _coalesced_writes(
        self, one_sql: str, many_sql: str, statements: int
    ) -> Coalesced[tuple[Any, ...], tuple[Any, Any]]:
        """Writes of one kind waiting at the same moment, applied in one transaction (a
        ``*_many`` function of migration 0009: each write applied by the one-write function, in
        arrival order); a write alone, or one of a transaction the database refused, by the
        one-write function. Each gives the function's (outcome, value)."""
        direct = self._direct
        assert direct is not None

        async def one(params: tuple[Any, ...]) -> tuple[Any, Any]:
            row = await direct.fetchrow(
                one_sql, *params, retry_on_unique=True, one_at_a_time=(params[0], params[1])
            )
            assert row is not None
            return row[0], row[1]

        async def many(writes: list[tuple[Any, ...]]) -> list[tuple[Any, Any]]:
            columns = [list(column) for column in zip(*writes, strict=True)]
            rows = await direct.fetch(many_sql, *columns, retry_on_unique=True)
            return [(row[0], row[1]) for row in rows]

        # The writes of customers locked elsewhere, or not yet known ("busy"), are sent again
        # alone; so are all of a statement that the database refused (a text it cannot store,
        # a validUntil that passed between two clock readings), each with its own answer.
        return Coalesced(
            one,
            many,
            max_in_flight=statements,
            one_by_one_on=(StatementError,),
            again_alone=lambda result: result[0] == "busy",
        )

    # ---- helpers -----------------------------------------------------------------------

    def _prepare_lot(self, lot: NewLot, customer_id: str, site: Site, now: datetime) -> _Prepared:
        valid_until = lot.valid_until or add_months(now, site.validity_in_months)
        return _Prepared(lot, valid_until, lot.fingerprint(customer_id))

    async def _write_lot(
        self,
        conn: AsyncConnection,
        tenant: str,
        customer_id: str,
        prepared: _Prepared,
        now: datetime,
    ) -> str:
        lot = prepared.lot
        if lot.id is not None and await _is_retry(conn, tenant, lot.id, prepared.fingerprint):
            return lot.id
        # Checked after the retry check: a retry answers as the first time, even once the
        # lot's validUntil has passed. Raising here rolls back the whole command.
        if prepared.valid_until <= now:
            raise InvalidRequest("validUntil must be in the future", field="validUntil")
        lot_id = lot.id or str(uuid.uuid4())
        balance, first_expiry = (
            await conn.execute(
                select(
                    func.coalesce(func.sum(lots.c.points - lots.c.used_points), 0),
                    func.min(lots.c.valid_until),
                ).where(_open_lots_of(tenant, customer_id, now))
            )
        ).one()
        await conn.execute(
            insert(lots).values(
                tenant=tenant,
                id=lot_id,
                customer_id=customer_id,
                reference_id=lot.reference_id,
                description=lot.description or DEFAULT_ADD_DESCRIPTION,
                points=lot.points,
                used_points=0,
                created_at=now,
                valid_until=prepared.valid_until,
                all_points_after_creation=int(balance) + lot.points,
                request_hash=prepared.fingerprint,
            )
        )
        expiries = [until for until in (first_expiry, prepared.valid_until) if until is not None]
        await _store_active_points(
            conn, tenant, customer_id, int(balance) + lot.points, now, min(expiries)
        )
        return lot_id


@dataclass(frozen=True, slots=True)
class _Prepared:
    lot: NewLot
    valid_until: datetime
    fingerprint: str


_KIND_ACCOUNT, _KIND_LOT, _KIND_REDEMPTION = 0, 1, 2

_ADD_CALL = text(
    "SELECT outcome, entry_id FROM rewardpoints_add(:tenant, :customer, :id, :client_id, "
    ":reference, :description, :points, :valid_until, :months, :hash, :now)"
)
_REDEEM_CALL = text(
    "SELECT outcome, available FROM rewardpoints_redeem(:tenant, :customer, :id, :client_id, "
    ":description, :points, :hash, :now)"
)

# The same calls and the balance read in asyncpg's numbered parameters, in the order of the
# params dicts above (direct.py).
_ADD_SQL = (
    "SELECT outcome, entry_id FROM rewardpoints_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_REDEEM_SQL = "SELECT outcome, available FROM rewardpoints_redeem($1, $2, $3, $4, $5, $6, $7, $8)"
_REDEEM_MANY_SQL = (
    "SELECT outcome, available FROM rewardpoints_redeem_many($1, $2, $3, $4, $5, $6, $7, $8)"
)
_ADD_MANY_SQL = (
    "SELECT outcome, entry_id"
    " FROM rewardpoints_add_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
# The balance of account ``a`` at $3: the active points its last write stored, while no lot
# they count has expired (migration 0006); else the sum of its open lots.
_ACCOUNT_BALANCE = (
    "CASE WHEN a.active_since <= $3 AND $3 < a.active_until THEN a.active_points"
    " ELSE COALESCE((SELECT SUM(l.points - l.used_points) FROM lots l"
    " WHERE l.tenant = a.tenant AND l.customer_id = a.customer_id AND NOT l.used_up"
    " AND l.valid_until > $3), 0) END::bigint"
)
_BALANCE_SQL = (
    f"SELECT {_ACCOUNT_BALANCE} FROM accounts a"  # noqa: S608 - fixed text
    " WHERE a.tenant = $1 AND a.customer_id = $2"
)
# The same for many customers at once ($1 tenants, $2 customer ids), one row per pair in their
# order, NULL for a customer without an entry; each pair is one probe of the accounts' key.
_BALANCES_SQL = (
    f"SELECT (SELECT {_ACCOUNT_BALANCE}"  # noqa: S608 - fixed text
    " FROM accounts a WHERE a.tenant = k.tenant AND a.customer_id = k.customer_id)"
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(tenant, customer_id, n)"
    " ORDER BY k.n"
)


def _raise_add_refusal(state: str | None, entry_id: str) -> None:
    """The refusals rewardpoints_add raises (migration 0004) as the ledger's errors."""
    if state == "RP409":
        raise EntryConflict(entry_id) from None
    if state == "RP400":
        raise InvalidRequest("validUntil must be in the future", field="validUntil") from None


_LOT_COLUMNS = (
    lots.c.id,
    lots.c.reference_id,
    lots.c.description,
    lots.c.points,
    lots.c.used_points,
    lots.c.created_at,
    lots.c.valid_until,
    lots.c.all_points_after_creation,
)
_REDEMPTION_COLUMNS = (
    redemptions.c.id,
    redemptions.c.description,
    redemptions.c.points,
    redemptions.c.created_at,
    redemptions.c.all_points_after_creation,
)


def _usage_join() -> Any:
    return and_(lot_usages.c.tenant == lots.c.tenant, lot_usages.c.lot_id == lots.c.id)


def _open_lots_of(tenant: str, customer_id: str, now: datetime) -> Any:
    return and_(
        lots.c.tenant == tenant,
        lots.c.customer_id == customer_id,
        lots.c.used_up == false(),
        lots.c.valid_until > now,
    )


def _collect_lots(rows: Any) -> list[Lot]:
    collected: list[Lot] = []
    for row in rows:
        *columns, used_by = row
        if not collected or collected[-1].id != columns[0]:
            collected.append(Lot(*columns))
        if used_by is not None:
            collected[-1].used_with.append(used_by)
    return collected


def _batch_query(tenant: str) -> Select[Any]:
    def typed_null(type_: Any) -> Any:
        return null().cast(type_)

    account_rows = select(
        accounts.c.customer_id,
        literal(_KIND_ACCOUNT).label("kind"),
        typed_null(UTCDateTime).label("created_at"),
        typed_null(Text).label("id"),
        typed_null(Text).label("reference_id"),
        typed_null(Text).label("description"),
        typed_null(BigInteger).label("points"),
        typed_null(BigInteger).label("used_points"),
        typed_null(UTCDateTime).label("valid_until"),
        typed_null(BigInteger).label("all_points_after_creation"),
        typed_null(Text).label("used_by"),
        typed_null(UTCDateTime).label("used_at"),
    ).where(accounts.c.tenant == tenant)
    lot_rows = (
        select(
            lots.c.customer_id,
            literal(_KIND_LOT),
            lots.c.created_at,
            lots.c.id,
            lots.c.reference_id,
            lots.c.description,
            lots.c.points,
            lots.c.used_points,
            lots.c.valid_until,
            lots.c.all_points_after_creation,
            lot_usages.c.redemption_id,
            lot_usages.c.created_at,
        )
        .select_from(lots.outerjoin(lot_usages, _usage_join()))
        .where(lots.c.tenant == tenant)
    )
    redemption_rows = select(
        redemptions.c.customer_id,
        literal(_KIND_REDEMPTION),
        redemptions.c.created_at,
        redemptions.c.id,
        typed_null(Text),
        redemptions.c.description,
        redemptions.c.points,
        typed_null(BigInteger),
        typed_null(UTCDateTime),
        redemptions.c.all_points_after_creation,
        typed_null(Text),
        typed_null(UTCDateTime),
    ).where(redemptions.c.tenant == tenant)
    combined = union_all(account_rows, lot_rows, redemption_rows).subquery("entries")
    return select(combined).order_by(
        combined.c.customer_id,
        combined.c.kind,
        combined.c.created_at,
        combined.c.id,
        combined.c.used_at,
        combined.c.used_by,
    )


async def _store_active_points(
    conn: AsyncConnection,
    tenant: str,
    customer_id: str,
    points: int,
    since: datetime,
    until: datetime | None,
) -> None:
    """Remember the customer's active points after a write, valid in ``[since, until)``.

    ``until`` is the earliest expiry among the lots counted (None: no lot counts, so the points
    stay 0 until the next write). Written under the customer's lock, as migration 0006's
    functions do; read by a balance on PostgreSQL.
    """
    await conn.execute(
        update(accounts)
        .where(accounts.c.tenant == tenant, accounts.c.customer_id == customer_id)
        .values(
            active_points=points,
            active_since=since,
            active_until=until if until is not None else _FOREVER,
        )
    )


async def _lock_account(conn: AsyncConnection, tenant: str, customer_id: str) -> bool:
    row = await conn.execute(
        select(accounts.c.customer_id)
        .where(accounts.c.tenant == tenant, accounts.c.customer_id == customer_id)
        .with_for_update()
    )
    return row.first() is not None


async def _is_retry(conn: AsyncConnection, tenant: str, entry_id: str, fingerprint: str) -> bool:
    """True when this id was already written with the same content; EntryConflict when not."""
    query = union_all(
        select(lots.c.request_hash).where(lots.c.tenant == tenant, lots.c.id == entry_id),
        select(redemptions.c.request_hash).where(
            redemptions.c.tenant == tenant, redemptions.c.id == entry_id
        ),
    )
    existing: Row[Any] | None = (await conn.execute(query)).first()
    if existing is None:
        return False
    if existing[0] == fingerprint:
        return True
    raise EntryConflict(entry_id)


def _insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing()
