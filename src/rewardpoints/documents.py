"""Customer summaries as Emporix's ``pointsSummaryOut`` JSON documents.

On PostgreSQL the database writes each document itself, one row per customer, so a summary of
100,000 lots or a tenant of millions is not turned into Python objects row by row; on SQLite
the ledger's objects are written out here. Both produce the same bytes (the API tests compare
them byte for byte on both databases).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text

from .db import is_unavailable, read_transaction, single_read
from .errors import CustomerNotFound, DatabaseUnavailable
from .ledger import CustomerSummary, Ledger, Lot, Redemption


def timestamp(moment: datetime) -> str:
    """``2023-05-11T18:32:18.591+00:00``: UTC, milliseconds, explicit offset."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def lot_json(lot: Lot) -> dict[str, Any]:
    return {
        "id": lot.id,
        "reference-id": lot.reference_id,
        "description": lot.description,
        "points": lot.points,
        "createdAt": timestamp(lot.created_at),
        "allPointsAfterCreation": lot.all_points_after_creation,
        "usedPoints": lot.used_points,
        "validUntil": timestamp(lot.valid_until),
        "usedWith": lot.used_with,
    }


def redemption_json(redemption: Redemption) -> dict[str, Any]:
    return {
        "id": redemption.id,
        "description": redemption.description,
        "points": redemption.points,
        "createdAt": timestamp(redemption.created_at),
        "allPointsAfterCreation": redemption.all_points_after_creation,
    }


def summary_json(summary: CustomerSummary) -> dict[str, Any]:
    return {
        "customerId": summary.customer_id,
        "activePoints": summary.active_points,
        "summary": {
            "addedPointsList": [lot_json(lot) for lot in summary.lots],
            "redeemedPointsList": [redemption_json(r) for r in summary.redemptions],
        },
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _stamp(column: str) -> str:
    return (
        f"'\"' || to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') "
        "|| '+00:00\"'"
    )


# A lot and a redemption as JSON objects, with the key order and compact separators of ``dumps``
# above; to_json escapes strings as json.dumps(ensure_ascii=False) does. ``used_with`` is the
# lot's redemption ids as comma-separated JSON strings, or NULL when it has none.
def _lot_item(used_with: str) -> str:
    return (
        """'{"id":' || to_json(lo.id::text)::text"""
        """ || ',"reference-id":' || COALESCE(to_json(lo.reference_id)::text, 'null')"""
        """ || ',"description":' || to_json(lo.description)::text"""
        """ || ',"points":' || lo.points::text"""
        f""" || ',"createdAt":' || {_stamp("lo.created_at")}"""
        """ || ',"allPointsAfterCreation":' || lo.all_points_after_creation::text"""
        """ || ',"usedPoints":' || lo.used_points::text"""
        f""" || ',"validUntil":' || {_stamp("lo.valid_until")}"""
        f""" || ',"usedWith":[' || COALESCE({used_with}, '') || ']}}'"""
    )


_REDEMPTION_ITEM = (
    """'{"id":' || to_json(re.id::text)::text"""
    """ || ',"description":' || to_json(re.description)::text"""
    """ || ',"points":' || re.points::text"""
    f""" || ',"createdAt":' || {_stamp("re.created_at")}"""
    """ || ',"allPointsAfterCreation":' || re.all_points_after_creation::text || '}'"""
)
_USED_WITH_ITEM = "to_json(u.redemption_id::text)::text"
_USED_WITH_ORDER = "ORDER BY u.created_at, u.redemption_id"
_LOT_ORDER = "ORDER BY lo.created_at, lo.id"
_REDEMPTION_ORDER = "ORDER BY re.created_at, re.id"
_ACTIVE = "SUM(CASE WHEN lo.valid_until > {now} THEN lo.points - lo.used_points ELSE 0 END)"
# The customer's document from its active points and its lists' items (NULL when empty).
_DOCUMENT = (
    """'{"customerId":' || to_json(a.customer_id::text)::text"""
    """ || ',"activePoints":' || COALESCE(l.active, 0)::text"""
    """ || ',"summary":{"addedPointsList":[' || COALESCE(l.items, '')"""
    """ || '],"redeemedPointsList":[' || COALESCE(r.items, '') || ']}}'"""
)

_USED_WITH_OF_LOT = f"""(
    SELECT string_agg({_USED_WITH_ITEM}, ',' {_USED_WITH_ORDER})
    FROM lot_usages u
    WHERE u.tenant = lo.tenant AND u.lot_id = lo.id)"""

# One customer's document. Each list is read through the customer's index; each lot's usedWith
# is one probe of lot_usages' primary key: cheap for one customer, whatever its history.
_ONE_DOCUMENT = text(f"""
SELECT {_DOCUMENT} AS document
FROM accounts a
LEFT JOIN LATERAL (
    SELECT {_ACTIVE.format(now=":now")} AS active,
           string_agg({_lot_item(_USED_WITH_OF_LOT)}, ',' {_LOT_ORDER}) AS items
    FROM lots lo
    WHERE lo.tenant = a.tenant AND lo.customer_id = a.customer_id
) l ON true
LEFT JOIN LATERAL (
    SELECT string_agg({_REDEMPTION_ITEM}, ',' {_REDEMPTION_ORDER}) AS items
    FROM redemptions re
    WHERE re.tenant = a.tenant AND re.customer_id = a.customer_id
) r ON true
WHERE a.tenant = :tenant AND a.customer_id = :customer
""")

# Every customer's document of tenant $1, ordered by customer id, with $2 as now. The tenant's
# lots, redemptions and accounts are each read once in customer order (their indexes' order) and
# merged, with no probe per customer or per lot (a probe per lot cost 2 s of 6 for 1M lots). The
# usedWith lists are made first, one per used lot, and sorted into the lots' order: the only
# sort, of the used lots alone. From then on the rows stream out as they are made.
_ALL_DOCUMENTS = f"""
WITH used AS (
    SELECT k.customer_id, k.created_at, k.id,
           string_agg({_USED_WITH_ITEM}, ',' {_USED_WITH_ORDER}) AS items
    FROM lot_usages u
    JOIN lots k ON k.tenant = u.tenant AND k.id = u.lot_id
    WHERE u.tenant = $1
    GROUP BY k.customer_id, k.created_at, k.id
), l AS (
    SELECT lo.customer_id,
           {_ACTIVE.format(now="$2")} AS active,
           string_agg({_lot_item("used.items")}, ',' {_LOT_ORDER}) AS items
    FROM lots lo
    LEFT JOIN used
      ON used.customer_id = lo.customer_id AND used.created_at = lo.created_at
         AND used.id = lo.id
    WHERE lo.tenant = $1
    GROUP BY lo.customer_id
), r AS (
    SELECT re.customer_id, string_agg({_REDEMPTION_ITEM}, ',' {_REDEMPTION_ORDER}) AS items
    FROM redemptions re
    WHERE re.tenant = $1
    GROUP BY re.customer_id
)
SELECT {_DOCUMENT} AS document
FROM accounts a
LEFT JOIN l ON l.customer_id = a.customer_id
LEFT JOIN r ON r.customer_id = a.customer_id
WHERE a.tenant = $1
ORDER BY a.customer_id
"""

# COPY data read ahead of the response, in the driver's reads (256 KB each at most).
_COPY_CHUNKS_AHEAD = 4
# PostgreSQL sends COPY data 8 KB at a time. While it makes the documents more slowly than they
# are sent on, every read would hand over one such piece, and the per-read work of the driver
# and of the response (some 30,000 times for 1M lots) would cost more than the copying itself.
# After a read smaller than this the reader waits a moment, so the next one finds ~100 KB.
_COPY_SMALL_READ = 64 * 1024
_COPY_GATHER_SECONDS = 0.004
# The connections' command_timeout (60 s, db.py) would bound the whole COPY, however slowly the
# client reads it. The COPY may take as long as the client needs; what is bounded instead is
# each wait for PostgreSQL's next data, as command_timeout bounded each fetch of a cursor.
_COPY_SECONDS = 24 * 3600.0
_COPY_WAIT_SECONDS = 60.0


def _in_database(ledger: Ledger) -> bool:
    return ledger.engine.dialect.name == "postgresql"


async def summary_document(ledger: Ledger, tenant: str, customer_id: str) -> bytes:
    if not _in_database(ledger):
        return dumps(summary_json(await ledger.summary(tenant, customer_id)))
    params = {"tenant": tenant, "customer": customer_id, "now": ledger.clock()}
    async with single_read(ledger.engine) as conn:
        row = (await conn.execute(_ONE_DOCUMENT, params)).first()
    if row is None:
        raise CustomerNotFound(customer_id)
    return str(row.document).encode()


async def summary_documents(ledger: Ledger, tenant: str) -> AsyncIterator[bytes]:
    """Every customer's document, ordered by customer id, as the elements of a JSON array.

    Each item holds one document or, on PostgreSQL, several separated by commas, so the items
    joined with commas are the array's elements. PostgreSQL sends the documents with
    ``COPY ... TO STDOUT``: one statement (one snapshot), written as fast as the documents are
    made and read as fast as they are sent, a few chunks ahead of the response at most.
    """
    if not _in_database(ledger):
        async for summary in ledger.stream_summaries(tenant):
            yield dumps(summary_json(summary))
        return
    async with read_transaction(ledger.engine) as conn:
        # JIT compilation would cost more than it saves in this query (~0.5 s of LLVM).
        await conn.execute(text("SET LOCAL jit = off"))
        fairy = await conn.get_raw_connection()
        driver: asyncpg.Connection = fairy.driver_connection
        copied = _copy_rows(driver, _ALL_DOCUMENTS, tenant, ledger.clock())
        try:
            async with aclosing(copied):
                async for rows in copied:
                    # In COPY's text format a row ends with a newline and a backslash in it is
                    # doubled; a JSON document has no other character that COPY escapes (JSON
                    # escapes every control character), and no newline.
                    yield rows.replace(b"\\\\", b"\\").replace(b"\n", b",")
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            if not is_unavailable(error):
                raise
            await conn.invalidate()
            raise DatabaseUnavailable(str(error)) from error
        except BaseException:
            # Closed half-way (the client went away) or cancelled: the connection's state is
            # unknown, so it does not go back to the pool.
            await conn.invalidate()
            raise


async def _copy_rows(
    driver: asyncpg.Connection, query: str, *args: Any
) -> AsyncGenerator[bytes, None]:
    """The rows of ``COPY (query) TO STDOUT``, some whole rows at a time, newline-separated.

    The COPY runs in a task of its own and hands over what the driver reads; it waits while
    ``_COPY_CHUNKS_AHEAD`` chunks are not taken yet, and the driver stops reading meanwhile, so
    PostgreSQL waits too.
    """
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = asyncio.Semaphore(_COPY_CHUNKS_AHEAD)

    async def sink(chunk: bytes) -> None:
        await room.acquire()
        chunks.put_nowait(chunk)
        if len(chunk) < _COPY_SMALL_READ:
            await asyncio.sleep(_COPY_GATHER_SECONDS)

    copy = asyncio.create_task(
        driver.copy_from_query(query, *args, output=sink, timeout=_COPY_SECONDS)
    )
    copy.add_done_callback(lambda _: chunks.put_nowait(None))
    partial: list[bytes] = []  # the start of a row that has not ended yet
    try:
        while True:
            async with asyncio.timeout(_COPY_WAIT_SECONDS):
                chunk = await chunks.get()
            if chunk is None:
                break
            room.release()
            end = chunk.rfind(b"\n")
            if end < 0:
                partial.append(chunk)
                continue
            if partial:
                partial.append(chunk[:end])
                rows = b"".join(partial)
                partial.clear()
            else:
                rows = chunk[:end]
            if end + 1 < len(chunk):
                partial.append(chunk[end + 1 :])
            yield rows
        await copy  # its error, if it failed
    finally:
        if not copy.done():
            copy.cancel()
            await asyncio.wait([copy])
        if not copy.cancelled():
            copy.exception()  # retrieved: it is raised above, or the rows were not wanted
