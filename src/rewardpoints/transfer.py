"""A tenant's ledger out as ``summaryBatch`` documents, and in from them: the way in from
Emporix (its summaryBatch answer) and out of this service.

Export writes what ``GET /reward-points/summaryBatch`` answers (documents.py writes it), as one
JSON array or one document a line (ndjson). Import reads either, as a stream: one document at
a time is parsed, so memory grows with the longest single customer history, never with the
file. Each customer is loaded whole or not at all, with its lots and redemptions under their
own ids and timestamps, its ``usedPoints`` and ``usedWith``; a customer already present is
left as it is, so a re-run, or a run resumed after Ctrl-C, adds nothing twice. A record that
cannot be loaded is refused with one line saying why, and the others are loaded.

How many points each redemption drew from each lot is not in a summary (``usedWith`` lists the
redemptions only). It is rebuilt as the ledger spends: each redemption, oldest first, draws
from the lots that list it, oldest first, what those lots still have to account for. A record
whose lots and redemptions do not add up that way is refused.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO

import asyncpg
import ijson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import connection
from .documents import Documents, summary_documents
from .ledger import (
    CHARGEBACK_DESCRIPTION,
    DEFAULT_ADD_DESCRIPTION,
    DEFAULT_REDEEM_DESCRIPTION,
    NewLot,
    NewRedemption,
)
from .progress import Progress

# The longest id and tenant the tables hold (models.Key).
_ID_LENGTH = 255
_DOCUMENT_START = b'{"customerId":'
# The most entries (lots and redemptions) and customers loaded in one transaction.
BATCH_ENTRIES = 20_000
BATCH_CUSTOMERS = 2_000


# ---- export -----------------------------------------------------------------------------


async def export_tenant(docs: Documents, tenant: str, out: BinaryIO, *, ndjson: bool) -> int:
    """Write every customer of ``tenant`` to ``out``, ordered by customer id, as one moment;
    returns how many. ``json`` is byte for byte the summaryBatch answer; ``ndjson`` is the same
    documents, one a line."""
    total = await _customers(docs.engine, tenant)
    progress = Progress(f"export {tenant}", "customers", total)
    written = 0
    async for chunk in summary_documents(docs, tenant):
        # A chunk holds documents and pieces of long ones, joined by commas (documents.py): a
        # row that begins a document begins with its customerId, a piece with a list item.
        starts = chunk.startswith(_DOCUMENT_START)
        if not ndjson:
            out.write(b"[" if not written and starts else b",")
        elif written or not starts:
            out.write(b"\n" if starts else b",")
        if ndjson:
            chunk = chunk.replace(b"," + _DOCUMENT_START, b"\n" + _DOCUMENT_START)
        out.write(chunk)
        written += chunk.count(_DOCUMENT_START)
        progress.advance(written)
    if not ndjson:
        out.write(b"]" if written else b"[]")
    elif written:
        out.write(b"\n")
    out.flush()
    progress.finish()
    return written


async def _customers(engine: AsyncEngine, tenant: str) -> int:
    async with connection(engine) as conn:
        count = await conn.execute(
            text("SELECT count(*) FROM accounts WHERE tenant = :tenant"), {"tenant": tenant}
        )
        return int(count.scalar_one())


# ---- import -----------------------------------------------------------------------------


class Refused(ValueError):
    """A record that cannot be loaded, and why."""


class Unreadable(ValueError):
    """The input is not JSON from some point on: nothing after it can be read."""


@dataclass(slots=True)
class Customer:
    """One document as the rows it loads."""

    customer_id: str
    lots: list[tuple[Any, ...]] = field(default_factory=list)
    redemptions: list[tuple[Any, ...]] = field(default_factory=list)
    usages: list[tuple[Any, ...]] = field(default_factory=list)
    first_at: datetime | None = None
    last_at: datetime | None = None

    @property
    def entries(self) -> int:
        return len(self.lots) + len(self.redemptions)


@dataclass(slots=True)
class Batch:
    customers: list[Customer] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    position: int = 0  # bytes of the input read so far
    entries: int = 0


@dataclass(slots=True)
class Imported:
    """What an import did."""

    customers: int = 0
    lots: int = 0
    redemptions: int = 0
    present: int = 0  # customers already there, left as they were
    refused: int = 0
    interrupted: bool = False


LOT_COLUMNS = (
    "tenant",
    "customer_id",
    "id",
    "reference_id",
    "description",
    "points",
    "used_points",
    "created_at",
    "valid_until",
    "all_points_after_creation",
    "request_hash",
)
REDEMPTION_COLUMNS = (
    "tenant",
    "customer_id",
    "id",
    "description",
    "points",
    "created_at",
    "all_points_after_creation",
    "request_hash",
)
USAGE_COLUMNS = ("tenant", "customer_id", "lot_id", "redemption_id", "points", "created_at")

_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS import_accounts (
    customer_id varchar(255) COLLATE "C" NOT NULL,
    created_at timestamptz,
    active_since timestamptz
) ON COMMIT DELETE ROWS
"""
# The new customers of the batch; one already there (or created meanwhile) is left alone.
_NEW_ACCOUNTS = """
INSERT INTO accounts (tenant, customer_id, created_at, active_since)
SELECT $1, customer_id, COALESCE(created_at, rewardpoints_read_now()), active_since
FROM import_accounts
ON CONFLICT DO NOTHING
RETURNING customer_id
"""
# The loaded customers' entries in their history (journal), as migration 0012 filled it for
# the entries written before it: a lot is "added", or "chargeback" when it is Emporix's refund
# of a coupon that could not be made; a redemption "redeemed"; each with the balance after it
# (allPointsAfterCreation), in the order they were written.
_JOURNAL = """
INSERT INTO journal (tenant, customer_id, created_at, kind, entry_id, points, balance_after,
                     reference_id, actor)
SELECT e.tenant, e.customer_id, e.created_at, e.kind, e.id, e.points, e.balance_after,
       e.reference_id, 'import'
  FROM (SELECT l.tenant, l.customer_id, l.created_at,
               CASE WHEN l.reference_id IS NULL AND l.description = $3
                    THEN 'chargeback' ELSE 'added' END AS kind,
               l.id, l.points, l.all_points_after_creation AS balance_after, l.reference_id,
               0 AS written
          FROM lots l WHERE l.tenant = $1 AND l.customer_id = ANY($2::text[])
        UNION ALL
        SELECT r.tenant, r.customer_id, r.created_at, 'redeemed', r.id, r.points,
               r.all_points_after_creation, NULL, 1
          FROM redemptions r WHERE r.tenant = $1 AND r.customer_id = ANY($2::text[])) AS e
 ORDER BY e.customer_id, e.created_at, e.written, e.id
"""
_ANALYZE = "ANALYZE accounts, lots, redemptions, lot_usages, journal"


def read_documents(source: IO[bytes]) -> Iterator[Any]:
    """The documents of a JSON array, or of one JSON value after another (ndjson), as they
    are read."""
    head = source.peek(64) if isinstance(source, io.BufferedReader) else b""
    documents: Iterator[Any]
    if head.lstrip()[:1] == b"[":
        documents = ijson.items(source, "item")
    else:
        documents = ijson.items(source, "", multiple_values=True)
    return documents


def customer_of(tenant: str, document: Any) -> Customer:
    """The rows ``document`` loads, or ``Refused``."""
    if not isinstance(document, dict):
        raise Refused("not a JSON object")
    customer_id = document.get("customerId")
    if not isinstance(customer_id, str) or not 0 < len(customer_id) <= _ID_LENGTH:
        raise Refused(f"customerId must be a string of 1-{_ID_LENGTH} characters")
    summary = document.get("summary") or {}
    if not isinstance(summary, dict):
        raise Refused("summary must be an object")
    added = _list(summary, "addedPointsList")
    redeemed = _list(summary, "redeemedPointsList")
    customer = Customer(customer_id)
    seen: set[str] = set()
    capacity: dict[str, int] = {}  # points each lot still has to attribute to its redemptions
    lots_of: dict[str, list[tuple[datetime, str]]] = {}  # redemption id -> its lots
    stamps: list[datetime] = []
    for index, item in enumerate(added):
        where = f"addedPointsList[{index}]"
        lot_id = _id(item, where, seen)
        points = _count(item, "points", where, least=1)
        used = _count(item, "usedPoints", where, least=0)
        if used > points:
            raise Refused(f"{where}: usedPoints {used} is more than its points {points}")
        created = _time(item, "createdAt", where)
        valid_until = _time(item, "validUntil", where)
        reference = item.get("reference-id")
        if reference is not None and not isinstance(reference, str):
            raise Refused(f"{where}: reference-id must be a string or null")
        description = _description(item, where, DEFAULT_ADD_DESCRIPTION)
        used_with = item.get("usedWith") or []
        if not isinstance(used_with, list) or not all(isinstance(r, str) for r in used_with):
            raise Refused(f"{where}: usedWith must be a list of redemption ids")
        if len(set(used_with)) != len(used_with):
            raise Refused(f"{where}: usedWith names a redemption twice")
        if bool(used_with) != bool(used):
            raise Refused(f"{where}: usedPoints {used} but usedWith lists {len(used_with)}")
        for redemption_id in used_with:
            lots_of.setdefault(redemption_id, []).append((created, lot_id))
        capacity[lot_id] = used
        hash_ = NewLot(points, lot_id, reference, description, valid_until).fingerprint(customer_id)
        customer.lots.append(
            (
                tenant,
                customer_id,
                lot_id,
                reference,
                description,
                points,
                used,
                created,
                valid_until,
                _count(item, "allPointsAfterCreation", where, least=None),
                hash_,
            )
        )
        stamps.append(created)
    redemptions = []
    for index, item in enumerate(redeemed):
        where = f"redeemedPointsList[{index}]"
        redemption_id = _id(item, where, seen)
        points = _count(item, "points", where, least=1)
        created = _time(item, "createdAt", where)
        description = _description(item, where, DEFAULT_REDEEM_DESCRIPTION)
        redemptions.append((created, redemption_id, points))
        hash_ = NewRedemption(points, redemption_id, description).fingerprint(customer_id)
        customer.redemptions.append(
            (
                tenant,
                customer_id,
                redemption_id,
                description,
                points,
                created,
                _count(item, "allPointsAfterCreation", where, least=None),
                hash_,
            )
        )
        stamps.append(created)
    unknown = set(lots_of) - {redemption_id for _, redemption_id, _ in redemptions}
    if unknown:
        raise Refused(f"usedWith names {sorted(unknown)[0]!r}, which is not a redemption here")
    for created, redemption_id, points in sorted(redemptions):
        left = points
        for _, lot_id in sorted(lots_of.get(redemption_id, ())):
            take = min(left, capacity[lot_id])
            if take <= 0:
                raise Refused(
                    f"lot {lot_id!r} lists redemption {redemption_id!r} in usedWith, but "
                    "its usedPoints are spent by the redemptions before it"
                )
            capacity[lot_id] -= take
            left -= take
            customer.usages.append((tenant, customer_id, lot_id, redemption_id, take, created))
        if left:
            raise Refused(
                f"redemption {redemption_id!r} spent {points} points, but the lots that list "
                f"it in usedWith account for {points - left}"
            )
    unspent = [lot_id for lot_id, left in capacity.items() if left]
    if unspent:
        raise Refused(
            f"lot {unspent[0]!r}: usedPoints are more than its usedWith redemptions spent"
        )
    if stamps:
        customer.first_at, customer.last_at = min(stamps), max(stamps)
    return customer


def _list(summary: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = summary.get(name) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise Refused(f"summary.{name} must be a list of objects")
    return items


def _id(item: dict[str, Any], where: str, seen: set[str]) -> str:
    value = item.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= _ID_LENGTH:
        raise Refused(f"{where}: id must be a string of 1-{_ID_LENGTH} characters")
    if value in seen:
        raise Refused(f"{where}: id {value!r} is used twice by this customer")
    seen.add(value)
    return value


def _count(item: dict[str, Any], name: str, where: str, *, least: int | None) -> int:
    """An integer of at least ``least`` (None: any) that a bigint column holds."""
    value: Any = item.get(name)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not whole or not -(2**63) <= value < 2**63 or (least is not None and value < least):
        shown = {None: "an integer", 0: "an integer of 0 or more"}.get(least, "a positive integer")
        raise Refused(f"{where}: {name} must be {shown}, not {value!r}")
    return int(value)


def _time(item: dict[str, Any], name: str, where: str) -> datetime:
    value = item.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Refused(f"{where}: {name} must be an ISO 8601 date-time, not {value!r}") from None
    # One without an offset is read as UTC, as the summaries are written.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _description(item: dict[str, Any], where: str, default: str) -> str:
    value = item.get("description")
    if value is None:
        return default  # as the service writes an entry sent without one
    if not isinstance(value, str):
        raise Refused(f"{where}: description must be a string")
    return value


class _Counted(io.RawIOBase):
    """A binary input that counts the bytes read from it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


class _Reader:
    """The input's documents in batches, each as much as one transaction loads."""

    def __init__(self, tenant: str, source: IO[bytes]) -> None:
        self._tenant = tenant
        self._counted = _Counted(source)
        self._documents = read_documents(io.BufferedReader(self._counted, 1024 * 1024))
        self._index = 0
        self._error: Unreadable | None = None

    def next_batch(self) -> Batch | None:
        """The next batch; the documents read before the input turned unreadable come first,
        then ``Unreadable``."""
        if self._error is not None:
            raise self._error
        batch = Batch()
        names: set[str] = set()
        for document in self._valid_documents():
            self._index += 1
            try:
                customer = customer_of(self._tenant, document)
                if customer.customer_id in names:
                    raise Refused("appears twice in the input")
            except Refused as refusal:
                batch.refusals.append(f"record {self._index}{_named(document)}: {refusal}")
            else:
                names.add(customer.customer_id)
                batch.customers.append(customer)
                batch.entries += customer.entries
            if batch.entries >= BATCH_ENTRIES or len(batch.customers) >= BATCH_CUSTOMERS:
                break
        batch.position = self._counted.position
        if not batch.customers and not batch.refusals:
            return None
        return batch

    def _valid_documents(self) -> Iterator[Any]:
        try:
            yield from self._documents
        except ijson.JSONError as error:
            at = self._counted.position
            self._error = Unreadable(
                f"the input is not valid JSON after record {self._index} (within its first "
                f"{at} bytes): {str(error).strip().splitlines()[0]}"
            )


def _named(document: Any) -> str:
    name = document.get("customerId") if isinstance(document, dict) else None
    return f" (customer {name!r})" if isinstance(name, str) else ""


async def import_tenant(
    engine: AsyncEngine,
    tenant: str,
    source: IO[bytes],
    *,
    size: int | None = None,
    refused: IO[str] | None = None,
    done: Imported | None = None,
) -> Imported:
    """Load ``source`` into ``tenant``; ``size`` (bytes) makes the progress show an ETA. Each
    refused record is a line on ``refused``. A batch is loaded while the next one is read.
    What was done is counted in ``done`` as it is done (so it is known after an interrupt)."""
    reader = _Reader(tenant, source)
    done = done or Imported()
    progress = Progress(f"import {tenant}", "bytes", size)
    async with _loader(engine) as load:
        pending = asyncio.ensure_future(asyncio.to_thread(reader.next_batch))
        try:
            while (batch := await pending) is not None:
                pending = asyncio.ensure_future(asyncio.to_thread(reader.next_batch))
                for line in batch.refusals:
                    if refused is not None:
                        print(line, file=refused, flush=True)
                done.refused += len(batch.refusals)
                loaded = await load(tenant, batch.customers) if batch.customers else []
                done.customers += len(loaded)
                done.present += len(batch.customers) - len(loaded)
                done.lots += sum(len(customer.lots) for customer in loaded)
                done.redemptions += sum(len(customer.redemptions) for customer in loaded)
                progress.advance(
                    batch.position,
                    customers=len(loaded),
                    present=len(batch.customers) - len(loaded),
                )
        finally:
            pending.cancel()
            progress.finish()
    return done


@asynccontextmanager
async def _loader(
    engine: AsyncEngine,
) -> AsyncIterator[Callable[[str, list[Customer]], Awaitable[list[Customer]]]]:
    """A function that loads a batch of customers in one transaction and returns those that
    were new (the others are left as they are); the tables' statistics are refreshed after the
    last batch, as the summaries' plans need them."""
    async with connection(engine) as conn:
        fairy = await conn.get_raw_connection()
        driver: asyncpg.Connection = fairy.driver_connection
        await conn.commit()  # nothing is pending; each batch is a transaction of its own
        await driver.execute(_STAGE)

        async def load(tenant: str, customers: list[Customer]) -> list[Customer]:
            async with driver.transaction():
                await driver.copy_records_to_table(
                    "import_accounts",
                    records=[(c.customer_id, c.first_at, c.last_at) for c in customers],
                )
                new = {row[0] for row in await driver.fetch(_NEW_ACCOUNTS, tenant)}
                loaded = [c for c in customers if c.customer_id in new]
                tables = (
                    ("lots", LOT_COLUMNS, [row for c in loaded for row in c.lots]),
                    (
                        "redemptions",
                        REDEMPTION_COLUMNS,
                        [row for c in loaded for row in c.redemptions],
                    ),
                    ("lot_usages", USAGE_COLUMNS, [row for c in loaded for row in c.usages]),
                )
                for table, columns, rows in tables:
                    if rows:
                        await driver.copy_records_to_table(table, records=rows, columns=columns)
                if loaded:
                    names = [c.customer_id for c in loaded]
                    await driver.execute(_JOURNAL, tenant, names, CHARGEBACK_DESCRIPTION)
            return loaded

        yield load
        await driver.execute(_ANALYZE)
