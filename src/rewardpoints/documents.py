"""Customer summaries as Emporix's ``pointsSummaryOut`` JSON documents, written by PostgreSQL.

The database writes each document itself, so a summary of 100,000 lots or a tenant of millions
is never turned into Python objects row by row; long ones are streamed as they are read, in rows
of a bounded length, so the worker's memory grows with no customer's history. Expiry is measured
at the database's clock (rewardpoints_read_now).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    aclosing,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import anyio
import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from .config import Settings
from .db import (
    DRIVER_ERRORS,
    is_unavailable,
    read_transaction,
    single_read,
    write_transaction,
)
from .direct import KeyedGate
from .errors import CustomerNotFound, DatabaseUnavailable
from .metrics import EXPORTS

log = logging.getLogger("rewardpoints")

# A part of a streamed answer: bytes, or a view of bytes read from the database.
Part = bytes | memoryview


@dataclass(slots=True)
class BatchExport:
    """How summaryBatch reads a tenant: in ranges of ``range_customers`` customers, on up to
    ``connections`` connections at once.

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

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """One of the ``exports`` turns, held until the block ends."""
        async with self._turns.hold(None):
            EXPORTS.inc()
            try:
                yield
            finally:
                EXPORTS.dec()

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
class SummaryStreams:
    """At most ``limit`` summaries streamed at once by one process. A streamed summary holds
    its connection for as long as its client takes to read it, so slow clients, a customer's
    own among them, could otherwise hold the whole pool. One more waits for a turn,
    ``wait_seconds`` at most, and is then refused as the database being busy. It is never built
    whole instead: that would cost the worker memory in proportion to the history, several
    times over, for every long summary asked for at once."""

    limit: int = 4
    wait_seconds: float = 10.0
    _turns: KeyedGate = field(init=False)

    def __post_init__(self) -> None:
        self._turns = KeyedGate(
            self.wait_seconds,
            capacity=self.limit,
            refusal=f"{self.limit} long summaries are being streamed;"
            f" none ended within {self.wait_seconds:g} s",
        )

    def turn(self) -> AbstractAsyncContextManager[None]:
        """One of the ``limit`` turns, held until the block ends."""
        return self._turns.hold(None)


@dataclass(slots=True)
class Documents:
    """The summaries of one service: its engine, and the limits on its long reads.

    A customer with more lots, or more redemptions, than ``stream_entries`` gets its summary
    streamed rather than built whole first, in one of the turns of ``streams``; such a summary
    keeps its settled stretches of ``segment_entries`` items as summary segments (0: none).
    """

    engine: AsyncEngine
    batch_export: BatchExport = field(default_factory=BatchExport)
    stream_entries: int = 1000
    streams: SummaryStreams = field(default_factory=SummaryStreams)
    segment_entries: int = 1000

    @classmethod
    def configured(cls, engine: AsyncEngine, settings: Settings) -> Documents:
        """The summaries with the limits ``settings`` set."""
        return cls(
            engine,
            BatchExport(
                settings.summary_batch_connections,
                settings.summary_batch_range_customers,
                exports=settings.summary_batch_exports,
                wait_seconds=settings.database_pool_timeout_seconds,
            ),
            stream_entries=settings.summary_stream_entries,
            streams=SummaryStreams(
                settings.summary_streams, wait_seconds=settings.database_pool_timeout_seconds
            ),
            segment_entries=settings.summary_segment_entries,
        )


def _stamp(column: str) -> str:
    return (
        f"'\"' || to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') "
        "|| '+00:00\"'"
    )


# A lot and a redemption as JSON objects, with the key order and compact separators of ``dumps``
# above; to_json escapes strings as json.dumps(ensure_ascii=False) does. ``used_with`` is the
# lot's redemption ids as comma-separated JSON strings, or NULL when it has none. A used-up lot
# never changes again: the redemption that spent its last point stored its item, made by
# rewardpoints_lot_item.sql exactly as here, and it is read instead. A change to this format
# needs a migration that sets lots.summary_item back to NULL and fills it again in the new format
# (test_documents compares the stored items with these bytes).
def _lot_item(used_with: str) -> str:
    return (
        """COALESCE(lo.summary_item, '{"id":' || to_json(lo.id::text)::text"""
        """ || ',"reference-id":' || COALESCE(to_json(lo.reference_id)::text, 'null')"""
        """ || ',"description":' || to_json(lo.description)::text"""
        """ || ',"points":' || lo.points::text"""
        f""" || ',"createdAt":' || {_stamp("lo.created_at")}"""
        """ || ',"allPointsAfterCreation":' || lo.all_points_after_creation::text"""
        """ || ',"usedPoints":' || lo.used_points::text"""
        f""" || ',"validUntil":' || {_stamp("lo.valid_until")}"""
        f""" || ',"usedWith":[' || COALESCE({used_with}, '') || ']}}')"""
    )


_REDEMPTION_ITEM = (
    """'{"id":' || to_json(re.id::text)::text"""
    """ || ',"description":' || to_json(re.description)::text"""
    """ || ',"points":' || (re.points - re.reversed_points)::text"""
    f""" || ',"createdAt":' || {_stamp("re.created_at")}"""
    """ || ',"allPointsAfterCreation":' || re.all_points_after_creation::text || '}'"""
)
_USED_WITH_ITEM = "to_json(u.redemption_id::text)::text"
_USED_WITH_ORDER = "ORDER BY u.created_at, u.redemption_id"
_LOT_ORDER = "ORDER BY lo.created_at, lo.id"
_REDEMPTION_ORDER = "ORDER BY re.created_at, re.id"
_ACTIVE = "SUM(CASE WHEN lo.valid_until > {now} THEN lo.points - lo.used_points ELSE 0 END)"
# The moment a summary's expiry is measured at, read once per statement.
_NOW = "(SELECT rewardpoints_read_now())"


def _document(lot_items: str = "l.items", redemption_items: str = "r.items") -> str:
    """The customer's document from its active points and its lists' items (NULL when empty).
    Joined from the right: each || copies both its sides, so the lists, the long parts, are
    copied once or twice rather than once per part after them."""
    return (
        """'{"customerId":' || to_json(a.customer_id::text)::text"""
        """ || ',"activePoints":' || (COALESCE(l.active, 0) - a.debt)::text"""
        f""" || (',"summary":{{"addedPointsList":[' || (COALESCE({lot_items}, '')"""
        f""" || ('],"redeemedPointsList":[' || (COALESCE({redemption_items}, '') || ']}}}}'))))"""
    )


_DOCUMENT = _document()

# A lot's usedWith: its usages read in list order through their own index (migration 0007) and
# joined as they come. An ordered aggregate (string_agg(... ORDER BY ...)) would sort each lot's
# list although it arrives sorted; PostgreSQL keeps a sorted subquery's order for the aggregate
# over it (test_documents stores usages out of order and reads them with the indexes off).
_USED_WITH_OF_LOT = f"""(
    SELECT string_agg(item, ',') FROM (
        SELECT {_USED_WITH_ITEM} AS item
        FROM lot_usages u
        WHERE u.tenant = lo.tenant AND u.customer_id = lo.customer_id AND u.lot_id = lo.id
        {_USED_WITH_ORDER}) AS used)"""


# One customer's document, when it has at most :most lots and at most :most redemptions; else
# NULL, and the document is streamed (below). Each list is counted through the customer's
# index, :most + 1 entries at most, so a long history costs here no more than that, and only
# then is the document built (a CASE runs the branch it takes only); each lot's usedWith is one
# probe of its usages' index.
def _at_most(table: str, alias: str) -> str:
    return f"""(SELECT count(*) FROM (
        SELECT 1 FROM {table} {alias}
        WHERE {alias}.tenant = a.tenant AND {alias}.customer_id = a.customer_id
        LIMIT :most + 1) AS counted) <= :most"""


_ONE_DOCUMENT = text(f"""
SELECT CASE WHEN {_at_most("lots", "lo")} AND {_at_most("redemptions", "re")} THEN (
    SELECT {_DOCUMENT}
    FROM (
        SELECT {_ACTIVE.format(now=_NOW)} AS active,
               string_agg({_lot_item(_USED_WITH_OF_LOT)}, ',' {_LOT_ORDER}) AS items
        FROM lots lo
        WHERE lo.tenant = a.tenant AND lo.customer_id = a.customer_id
    ) l, (
        SELECT string_agg({_REDEMPTION_ITEM}, ',' {_REDEMPTION_ORDER}) AS items
        FROM redemptions re
        WHERE re.tenant = a.tenant AND re.customer_id = a.customer_id
    ) r
) END AS document
FROM accounts a
WHERE a.tenant = :tenant AND a.customer_id = :customer
""")

# A streamed document's start, up to the first list's opening bracket (NULL without the
# customer $1/$2). A lot used up adds nothing to the active points: only the open ones are read
# (their own index).
_DOCUMENT_START = f"""
SELECT '{{"customerId":' || to_json(a.customer_id::text)::text
    || ',"activePoints":' || (COALESCE((
        SELECT {_ACTIVE.format(now=_NOW)}
        FROM lots lo
        WHERE lo.tenant = a.tenant AND lo.customer_id = a.customer_id
          AND NOT lo.used_up), 0) - a.debt)::text
    || ',"summary":{{"addedPointsList":['
FROM accounts a
WHERE a.tenant = $1 AND a.customer_id = $2
"""

# A used lot's usedWith list: one probe of its usages' index (migration 0007). Lots with no
# point used (most of the open ones) have none and are not probed.
_USED_WITH_OF_USED_LOT = f"CASE WHEN lo.used_points > 0 THEN {_USED_WITH_OF_LOT} END"


@dataclass(frozen=True, slots=True)
class _List:
    """One list of a summary: its entries' table (as ``alias``), an entry's item, and when an
    entry's item is settled, so that it may be kept in a segment (below)."""

    name: str  # summary_segments.list
    table: str
    alias: str
    item: str
    settled: str


# A lot is settled once used up: nothing draws from it any more. Every redemption is settled.
# Only a reversal changes either afterwards, and it deletes the segments holding them
# (rewardpoints_reverse.sql).
_LOTS = _List("lots", "lots", "lo", _lot_item(_USED_WITH_OF_USED_LOT), "lo.used_up")
_REDEMPTIONS = _List("redemptions", "redemptions", "re", _REDEMPTION_ITEM, "true")


# Summary segments (models.summary_segments): a long summary's settled stretches, each of
# Documents.segment_entries items, made once and read as one row each instead of their entries.
# Between and around them lie the gaps: the entries no segment holds (those not settled, those
# settled since, a stretch too short), read and built one by one. A list is read as its
# segments in order, each after the gap before it, then the gap after the last one; nothing in
# a gap is in a segment, so the list is whole and in order. The customer is $1/$2 ($3: the
# entries of a segment).
def _segments_and_gaps(lst: _List) -> str:
    """The list's segments in list order (``items``), each with the bounds of the gap before
    it (``after``, ``before``, both excluded), then a last row with the gap after them (its
    ``items`` NULL)."""
    of_customer = f"s.tenant = $1 AND s.customer_id = $2 AND s.list = '{lst.name}'"
    return f"""
    SELECT s.items, s.first_at AS before_at, s.first_id AS before_id,
           lag(s.last_at, 1, '-infinity') OVER w AS after_at,
           lag(s.last_id, 1, '') OVER w AS after_id
    FROM summary_segments s
    WHERE {of_customer}
    WINDOW w AS (ORDER BY s.first_at, s.first_id)
    UNION ALL
    SELECT NULL, 'infinity', '', COALESCE(t.last_at, '-infinity'), COALESCE(t.last_id, '')
    FROM (VALUES (1)) AS one (n)
    LEFT JOIN LATERAL (
        SELECT s.last_at, s.last_id FROM summary_segments s
        WHERE {of_customer}
        ORDER BY s.first_at DESC, s.first_id DESC LIMIT 1
    ) AS t ON true"""


def _in_gap(lst: _List) -> str:
    """The entries of the gap ``g`` (from _segments_and_gaps), through the customer's index."""
    key = f"({lst.alias}.created_at, {lst.alias}.id)"
    return f"""{lst.table} {lst.alias}
        WHERE {lst.alias}.tenant = $1 AND {lst.alias}.customer_id = $2
          AND {key} > (g.after_at, g.after_id) AND {key} < (g.before_at, g.before_id)"""


def _list_rows(lst: _List) -> str:
    """The list's items as rows, in list order, each row after a comma: a segment's items in
    one row, a gap's entries one a row. PostgreSQL keeps the order of the rows of a nested
    loop's outer side, and of each part of a UNION ALL, as written (test_summary_segments
    interleaves gaps and segments)."""
    order = f"ORDER BY {lst.alias}.created_at, {lst.alias}.id"
    return f"""
SELECT x.item FROM ({_segments_and_gaps(lst)}) AS g
CROSS JOIN LATERAL (
    (SELECT ',' || {lst.item} AS item FROM {_in_gap(lst)} {order})
    UNION ALL
    SELECT g.items WHERE g.items IS NOT NULL
) AS x"""


def _segments_due(lst: _List) -> str:
    """Whether a gap of the list holds at least $3 settled entries (necessary for a segment to
    be made, not sufficient: they must follow one another)."""
    return f"""EXISTS (
    SELECT 1 FROM ({_segments_and_gaps(lst)}) AS g
    WHERE (SELECT count(*) FROM (
        SELECT 1 FROM {_in_gap(lst)} AND {lst.settled} LIMIT $3::integer) AS e) >= $3::integer)"""


def _make_segments(lst: _List) -> str:
    """Segments of every $3 settled entries that follow one another in a gap of the list:
    within a gap, the settled entries are numbered from 0 after each entry not settled (``run``,
    ``pos``); an entry numbered a multiple of $3 begins a segment when the one $3 - 1 further
    on is there too. The gaps are read one after another (OFFSET 0 keeps their entries a
    subquery of each, which a planner without statistics of the rows would rather scan whole
    and join with the gaps the other way round), and the keys are numbered by window functions,
    not joined with themselves."""
    a = lst.alias
    key = f"({a}.created_at, {a}.id)"
    return f"""
WITH gaps AS MATERIALIZED (
    SELECT row_number() OVER () AS gap, g.after_at, g.after_id, g.before_at, g.before_id
    FROM ({_segments_and_gaps(lst)}) AS g
), keyed AS (
    SELECT g.gap, e.at, e.id, e.settled,
           count(*) FILTER (WHERE NOT e.settled)
               OVER (PARTITION BY g.gap ORDER BY e.at, e.id) AS run
    FROM gaps g
    CROSS JOIN LATERAL (
        SELECT {a}.created_at AS at, {a}.id, {lst.settled} AS settled FROM {_in_gap(lst)}
        OFFSET 0
    ) AS e
), placed AS (
    SELECT k.at, k.id, row_number() OVER w - 1 AS pos,
           lead(k.at, $3::integer - 1) OVER w AS last_at,
           lead(k.id, $3::integer - 1) OVER w AS last_id
    FROM keyed k
    WHERE k.settled
    WINDOW w AS (PARTITION BY k.gap, k.run ORDER BY k.at, k.id)
)
INSERT INTO summary_segments (tenant, customer_id, list, first_at, first_id, last_at, last_id,
                              entries, items)
SELECT $1, $2, '{lst.name}', f.at, f.id, f.last_at, f.last_id, $3::integer, (
    SELECT string_agg(',' || i.item, '') FROM (
        SELECT {lst.item} AS item FROM {lst.table} {a}
        WHERE {a}.tenant = $1 AND {a}.customer_id = $2
          AND {key} >= (f.at, f.id) AND {key} <= (f.last_at, f.last_id)
        ORDER BY {a}.created_at, {a}.id) AS i)
FROM placed f
WHERE f.pos % $3::integer = 0 AND f.last_at IS NOT NULL
"""


_SEGMENTS_DUE = f"SELECT {_segments_due(_LOTS)} OR {_segments_due(_REDEMPTIONS)}"
# Segments are made under the customer's lock, so no write changes what they hold meanwhile;
# a summary does not wait for a write that holds it, and reads without the segments it lacks.
_LOCK_FOR_SEGMENTS = """
SELECT true FROM accounts WHERE tenant = $1 AND customer_id = $2
FOR NO KEY UPDATE SKIP LOCKED
"""
_MAKE_SEGMENTS = (_make_segments(_LOTS), _make_segments(_REDEMPTIONS))
# A streamed document as the rows of one COPY: its start (NULL without the customer), the lots'
# items, a NULL, the redemptions' items; the rest is written around them.
_DOCUMENT_ROWS = f"""
SELECT ({_DOCUMENT_START})
UNION ALL ({_list_rows(_LOTS)})
UNION ALL SELECT NULL
UNION ALL ({_list_rows(_REDEMPTIONS)})
"""
_BETWEEN_LISTS = b'],"redeemedPointsList":['
_DOCUMENT_END = b"]}}"
# A streamed document is handed on in parts of about this many bytes: each part passes through
# the response and the server at a cost of its own.
_PART_BYTES = 256 * 1024


# Each row of COPY reaches the worker whole: the driver takes in all of a row before it hands it
# on, and the worker copies it a few times more on its way out. One row per document would make
# the worker's memory grow, several times over, with the longest history of the tenant, so a
# document longer than _PIECE_BYTES is sent as several rows: one list item each, the first with
# the document's start before it, the last with its end. The break between two rows is the
# comma between two items, and the rows of an export are joined with commas (_documents), so
# the bytes are the same. The commas to break at are marked with a character that JSON written
# by PostgreSQL never holds (it escapes every control character) and the document is split
# there; the lists' joined items (l.items, r.items) tell its length at no cost. The pieces are
# made after the rows are ordered (PostgreSQL sets such a function of the select list after
# the sort), so they stay in their order.
_PIECE_BYTES = 64 * 1024
_LONGER_THAN_A_PIECE = (
    f"COALESCE(octet_length(l.items), 0) + COALESCE(octet_length(r.items), 0) > {_PIECE_BYTES}"
)


def _broken(items: str) -> str:
    return f"""replace({items}, '}},{{"id":', E'}}\\x1e{{"id":')"""


_PIECES = f"string_to_array({_document(_broken('l.items'), _broken('r.items'))}, E'\\x1e')"


@functools.cache
def _range_documents(*, lower: bool, upper: bool) -> str:
    """The documents of tenant $1's customers in one range of ids, ordered by id, a long one in
    pieces (``_PIECE_BYTES``); $2 is now.

    The range is ``[$3, $4)``, without the bounds not asked for (``$3`` is then the upper one).
    The accounts, lots and redemptions of the range are each read once in customer order (their
    indexes' order) and merged: no probe per customer, and the only probe per lot is the usedWith
    list of a used lot. From the first customer on, the rows stream out as they are made. The
    lists are read in list order within each customer, and their items joined as they come (a
    sorted subquery's order is kept for the aggregate over it, as for usedWith): an ordered
    aggregate would set up a sort for each customer's list.
    """
    bounds = []
    if lower:
        bounds.append(">= $3")
    if upper:
        bounds.append(f"< ${4 if lower else 3}")

    def within(column: str) -> str:
        return "".join(f" AND {column} {bound}" for bound in bounds)

    return f"""
WITH l AS (
    SELECT lo.customer_id,
           {_ACTIVE.format(now="$2")} AS active,
           string_agg({_lot_item(_USED_WITH_OF_USED_LOT)}, ',') AS items
    FROM (
        SELECT * FROM lots lo
        WHERE lo.tenant = $1{within("lo.customer_id")}
        ORDER BY lo.customer_id, lo.created_at, lo.id
    ) lo
    GROUP BY lo.customer_id
), r AS (
    SELECT re.customer_id, string_agg({_REDEMPTION_ITEM}, ',') AS items
    FROM (
        SELECT * FROM redemptions re
        WHERE re.tenant = $1{within("re.customer_id")}
        ORDER BY re.customer_id, re.created_at, re.id
    ) re
    GROUP BY re.customer_id
)
SELECT unnest(CASE WHEN {_LONGER_THAN_A_PIECE} THEN {_PIECES} ELSE ARRAY[{_DOCUMENT}] END)
    AS document
FROM accounts a
LEFT JOIN l ON l.customer_id = a.customer_id
LEFT JOIN r ON r.customer_id = a.customer_id
WHERE a.tenant = $1{within("a.customer_id")}
ORDER BY a.customer_id
"""


# Where tenant :tenant's ranges of :per customers begin: the id of every :per-th customer but the
# first (the first range has no lower bound, the last no upper one).
_RANGE_STARTS = text("""
SELECT customer_id FROM (
    SELECT customer_id, row_number() OVER (ORDER BY customer_id) AS n
    FROM accounts WHERE tenant = :tenant
) AS numbered
WHERE n > 1 AND (n - 1) % :per = 0
ORDER BY customer_id
""")


# Each connection of an export runs these first, in one statement. JIT compilation would cost
# more than it saves (~0.5 s of LLVM for a million lots). A nested loop is never right for these
# merges, but it is what the planner picks for a range of a tenant whose statistics are missing
# or stale (just loaded in bulk, not analysed yet): every customer of the range would rebuild
# the range's lists. Between two ranges, and once its ranges are read ahead, a connection is
# idle in its transaction for as long as the client takes to read what is ahead of it: that is
# not a stalled request, so the idle-in-transaction timeout (db.py) does not apply to an export,
# as it did not to a single COPY, which is never idle. A client that stops reading altogether
# is given up after the send timeout of the response (api/streaming.py) instead. The COPYs'
# values are written into their statements as literals (_literal), which this reads as written.
def _settings(*settings: tuple[str, str]) -> str:
    return "SELECT " + ", ".join(
        f"set_config('{name}', '{value}', true)" for name, value in settings
    )


_EXPORT = (
    ("jit", "off"),
    ("enable_nestloop", "off"),
    ("idle_in_transaction_session_timeout", "0"),
    ("standard_conforming_strings", "on"),
)
_EXPORT_SETTINGS = (_settings(*_EXPORT),)

# A streamed summary reads each list through its customer's index, in the list's order, as it is
# sent. The planner may rather collect a long list's rows from the table and sort them (as it
# does when a table's order on disk no longer follows the index's): then the first byte waits
# for the last row, and the sort of ~27 MB spills to disk; nor may a parallel plan mix up the
# order of its segments and gaps (_list_rows). (Any statement added to that transaction gets
# the settings too.)
_STREAM_SETTINGS = (
    _settings(*_EXPORT, ("enable_sort", "off"), ("max_parallel_workers_per_gather", "0")),
)

# COPY data read ahead of the response on each connection, in the driver's reads (256 KB each
# at most). A connection whose range is not being sent yet fills this while the one before it
# is sent: as long as a range's documents fit, both backends build documents all the time.
# An export on one connection only needs to keep its backend from waiting for the response.
_COPY_AHEAD_BYTES = 8 * 1024 * 1024
_COPY_AHEAD_BYTES_ALONE = 1024 * 1024
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

# The COPYs' rows are JSON text, one column, in COPY's binary format: each value as it is,
# after its length. The text formats make PostgreSQL look at every byte of every value for
# characters to escape (the CSV format's scan took ~60 ms of a 100,000-lot summary's ~120 ms of
# PostgreSQL's CPU), and leave a newline after each row for the worker to replace.
_COPY_OPTIONS: dict[str, Any] = {"format": "binary"}
# The binary format: a header (signature, flags, the length of an extension that follows), then
# per row its number of columns (1 here) and each column's length and bytes, then -1.
_COPY_HEADER = struct.Struct("!11sii")
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_ROW = struct.Struct("!hi")
_COPY_TRAILER = b"\xff\xff"


def dumps(value: Any) -> bytes:
    """Compact JSON, as the documents are written (keys as given, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


async def summary_document(
    docs: Documents, tenant: str, customer_id: str
) -> AsyncGenerator[Part, None]:
    """The customer's document, in parts that joined are the document.

    ``CustomerNotFound`` (or a database error) comes before the first part. A summary of at most
    ``docs.stream_entries`` lots and as many redemptions is one part. A longer one is streamed,
    in one of the turns of ``docs.streams`` (an answer that finds them all taken waits for one,
    and fails as the database being unavailable if none comes in time, before its first part):
    its lists are read with ``COPY ... TO STDOUT`` as they are sent, a bounded amount ahead, so
    a history of 100,000 lots (27 MB of JSON) is not held in the worker's memory, and its first
    bytes leave at once. Either way it is the customer as of one moment.
    """
    params = {"tenant": tenant, "customer": customer_id, "most": docs.stream_entries}
    async with single_read(docs.engine) as conn:
        row = (await conn.execute(_ONE_DOCUMENT, params)).first()
    if row is None:
        raise CustomerNotFound(customer_id)
    if row.document is not None:
        yield str(row.document).encode()
        return
    # Closed with this generator, so its connection and turn are given up when this one is.
    streamed = _streamed_document(
        docs.engine, tenant, customer_id, segment_entries=docs.segment_entries
    )
    async with docs.streams.turn(), aclosing(streamed) as parts:
        async for part in parts:
            yield part


async def _streamed_document(
    engine: AsyncEngine, tenant: str, customer_id: str, *, segment_entries: int = 0
) -> AsyncGenerator[Part, None]:
    if segment_entries:
        await make_segments(engine, tenant, customer_id, segment_entries)
    async with read_transaction(engine, snapshot=True) as conn:
        copy: _RangeCopy | None = None
        try:
            for statement in _STREAM_SETTINGS:
                await conn.execute(text(statement))
            fairy = await conn.get_raw_connection()
            driver: asyncpg.Connection = fairy.driver_connection
            rows = [(_DOCUMENT_ROWS, (tenant, customer_id))]
            copy = _RangeCopy(driver, rows, _COPY_AHEAD_BYTES_ALONE, gather=False)
            async for part in _document_parts(copy.rows(), customer_id):
                yield part
        except CustomerNotFound:
            raise
        except BaseException as error:
            unavailable = await _abandon([copy] if copy else [], [conn], error)
            if unavailable:
                raise unavailable from error
            raise
        await copy.close()


async def _document_parts(
    rows: AsyncIterator[list[memoryview | None]], customer_id: str
) -> AsyncIterator[Part]:
    """The document from the values of _DOCUMENT_ROWS: the start at once (else
    ``CustomerNotFound``: deleted since it was counted), then the rest in parts of about
    _PART_BYTES or more. A list's items come each after a comma, but for the first: the
    values are the document's bytes as they are, and a long one (a segment) is handed on
    without being copied."""
    pieces: list[Part] = []
    size = 0
    started = False  # the start is out
    first = False  # the next item is the first of its list
    async for values in rows:
        for value in values:
            if not started:
                if value is None:
                    raise CustomerNotFound(customer_id)
                yield bytes(value)
                started = first = True
                continue
            if value is None:
                piece: Part = _BETWEEN_LISTS
                first = True
            else:
                piece = value[1:] if first else value
                first = False
            if len(piece) >= _PART_BYTES:
                if pieces:
                    yield b"".join(pieces)
                    pieces.clear()
                    size = 0
                yield piece
                continue
            pieces.append(piece)
            size += len(piece)
            if size >= _PART_BYTES:
                yield b"".join(pieces)
                pieces.clear()
                size = 0
    pieces.append(_DOCUMENT_END)
    yield b"".join(pieces)


async def make_segments(engine: AsyncEngine, tenant: str, customer_id: str, entries: int) -> int:
    """Make the segments of ``entries`` items that the customer's summary lacks, when it lacks
    any and no write holds the customer (then they are left to a later summary); returns how
    many were made. A summary is the same with or without them, so a failure here is logged
    and the summary read all the same."""
    customer = (tenant, customer_id)
    try:
        async with single_read(engine) as conn:
            due = (await conn.exec_driver_sql(_SEGMENTS_DUE, (*customer, entries))).scalar()
        if not due:
            return 0
        async with write_transaction(engine) as conn:
            locked = (await conn.exec_driver_sql(_LOCK_FOR_SEGMENTS, customer)).scalar()
            if not locked:
                return 0
            # The lists' items are read as a summary reads them (its usages in list order).
            for statement in _STREAM_SETTINGS:
                await conn.execute(text(statement))
            made = 0
            for statement in _MAKE_SEGMENTS:
                result = await conn.exec_driver_sql(statement, (*customer, entries))
                made += result.rowcount
            return made
    except (DBAPIError, DatabaseUnavailable) as error:
        log.warning("summary segments of customer %r not made: %s", customer_id, error)
        return 0


async def summary_documents(
    docs: Documents, tenant: str, engine: AsyncEngine | None = None
) -> AsyncGenerator[bytes, None]:
    """Every customer's document, ordered by customer id, as the elements of a JSON array
    (``_documents``), read on ``engine`` (a read replica's) or the primary's, in one of the
    turns of ``docs.batch_export``: an export that finds them all taken waits for one, and
    fails as the database being unavailable if none comes in time, before its first item."""
    # The inner generator is closed with this one, so its connections are given up with it.
    documents = _documents(docs, tenant, engine or docs.engine)
    async with docs.batch_export.turn(), aclosing(documents):
        async for document in documents:
            yield document


async def _documents(
    docs: Documents, tenant: str, engine: AsyncEngine
) -> AsyncGenerator[bytes, None]:
    """Every customer's document, ordered by customer id, as the elements of a JSON array.

    Each item holds several rows separated by commas, each a document or a piece of a long one
    (``_range_documents``), so the items joined with commas are the array's elements. The
    tenant's customers are read in ranges (``BatchExport.range_customers`` each) with
    ``COPY ... TO STDOUT``, on up to ``BatchExport.connections`` connections that share one
    snapshot and one moment for expiry: while one range is sent, the next ones are being made
    by other PostgreSQL backends, a bounded amount ahead. Every range is read as fast as it is
    sent, and the response is the tenant as of one moment.
    """
    export = docs.batch_export
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(read_transaction(engine, snapshot=True))
        connections = [first]
        copies: list[_RangeCopy] = []
        try:
            for statement in _EXPORT_SETTINGS:
                await first.execute(text(statement))
            now = (await first.execute(text("SELECT rewardpoints_read_now()"))).scalar_one()
            starts = (
                await first.execute(
                    _RANGE_STARTS, {"tenant": tenant, "per": export.range_customers}
                )
            ).scalars()
            bounds = [str(start) for start in starts]
            ranges = list(zip([None, *bounds], [*bounds, None], strict=True))
            wanted = min(len(ranges), export.connections, 1 + _idle_connections(engine)) - 1
            with export.claim(wanted) as extra:
                if extra:
                    exported = await first.execute(text("SELECT pg_export_snapshot()"))
                    # PostgreSQL's own identifier ("00000003-0000001B-1"): nothing to quote.
                    importing = text(f"SET TRANSACTION SNAPSHOT '{exported.scalar_one()}'")
                    for _ in range(extra):
                        conn = await stack.enter_async_context(
                            read_transaction(engine, snapshot=True)
                        )
                        connections.append(conn)
                        await conn.execute(importing)
                        for statement in _EXPORT_SETTINGS:
                            await conn.execute(text(statement))
                for index, conn in enumerate(connections):
                    fairy = await conn.get_raw_connection()
                    driver: asyncpg.Connection = fairy.driver_connection
                    statements = [
                        _range_statement(tenant, now, lower, upper)
                        for lower, upper in ranges[index :: len(connections)]
                    ]
                    ahead = _COPY_AHEAD_BYTES if extra else _COPY_AHEAD_BYTES_ALONE
                    copies.append(_RangeCopy(driver, statements, ahead))
                for index in range(len(ranges)):
                    async for values in copies[index % len(copies)].rows():
                        # Documents are never NULL (_range_documents).
                        yield b",".join(cast(list[memoryview], values))
        except BaseException as error:
            unavailable = await _abandon(copies, connections, error)
            if unavailable:
                raise unavailable from error
            raise
        for copy in copies:
            await copy.close()


async def _abandon(
    copies: list[_RangeCopy], connections: list[AsyncConnection], error: BaseException
) -> DatabaseUnavailable | None:
    """After a stream failed, was closed half-way (the client went away) or was cancelled: its
    connections' state is unknown, so they do not go back to the pool. Shielded: a cancelled
    response would otherwise stop this at its first wait, leaving the rest open. Returns what
    to raise instead of ``error`` when it means the database is unreachable."""
    with anyio.CancelScope(shield=True):
        for copy in copies:
            copy.cancel()
        for conn in connections:
            # Closed at once: SQLAlchemy's invalidation first tries a graceful close, which
            # waits 2 s for a connection whose COPY is parked in its read-ahead. One that
            # SQLAlchemy invalidated already (it saw the server go away) has no driver left.
            if not conn.invalidated:
                fairy = await conn.get_raw_connection()
                driver: asyncpg.Connection = fairy.driver_connection
                driver.terminate()
            await conn.invalidate()
        for copy in copies:
            await copy.close()
    driver_error = isinstance(error, (asyncpg.PostgresError, *DRIVER_ERRORS))
    if driver_error and is_unavailable(error):
        return DatabaseUnavailable(str(error))
    return None


def _idle_connections(engine: AsyncEngine) -> int:
    """Connections of the pool's base size not in use now: an export takes extra connections
    only from these, so it never waits for one (nor fails waiting) while it holds another,
    and it leaves the overflow to the requests that need one."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return 0
    return max(0, pool.size() - pool.checkedout())


def _range_statement(
    tenant: str, now: datetime, lower: str | None, upper: str | None
) -> tuple[str, tuple[Any, ...]]:
    query = _range_documents(lower=lower is not None, upper=upper is not None)
    bounds = tuple(bound for bound in (lower, upper) if bound is not None)
    return query, (tenant, now, *bounds)


def _literal(value: str | int | datetime) -> str:
    """``value`` as a literal of a statement read with standard_conforming_strings on (set by
    the transactions that COPY: _EXPORT)."""
    if isinstance(value, bool):
        raise TypeError("no boolean literals")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time without its offset")
        return f"'{value.isoformat()}'::timestamptz"
    if "\x00" in value:  # PostgreSQL's text holds no NUL
        raise ValueError("a string with a NUL character")
    return "'" + value.replace("'", "''") + "'"


_PARAMETER = re.compile(r"\$(\d+)\b")


def _with_literals(query: str, args: tuple[Any, ...]) -> str:
    """``query`` with its parameters ($1, ...) written in as literals. COPY takes no
    parameters; asyncpg would ask PostgreSQL to quote them, two more round trips per COPY."""
    return _PARAMETER.sub(lambda found: _literal(args[int(found.group(1)) - 1]), query)


_RANGE_END = object()


class _RangeCopy:
    """The rows of ``COPY (query) TO STDOUT`` of several statements, one after another, on one
    connection, as each statement's values (_COPY_OPTIONS), some whole rows at a time.

    The COPYs run in a task of their own and hand over what the driver reads; it waits while
    ``ahead_bytes`` are not taken yet, and the driver stops reading meanwhile, so
    PostgreSQL waits too. With ``gather``, a small read is followed by a pause (see
    _COPY_SMALL_READ).
    """

    def __init__(
        self,
        driver: asyncpg.Connection,
        statements: list[tuple[str, tuple[Any, ...]]],
        ahead_bytes: int,
        *,
        gather: bool = True,
    ) -> None:
        self._ahead_bytes = ahead_bytes
        self._gather = gather
        self._chunks: asyncio.Queue[bytes | object | None] = asyncio.Queue()
        self._ahead = 0  # bytes handed over and not taken yet
        self._room = asyncio.Event()
        self._room.set()
        self._task = asyncio.create_task(self._copy(driver, statements))
        self._task.add_done_callback(lambda _: self._chunks.put_nowait(None))

    async def _copy(
        self, driver: asyncpg.Connection, statements: list[tuple[str, tuple[Any, ...]]]
    ) -> None:
        for query, args in statements:
            await driver.copy_from_query(
                _with_literals(query, args),
                output=self._sink,
                timeout=_COPY_SECONDS,
                **_COPY_OPTIONS,
            )
            self._chunks.put_nowait(_RANGE_END)

    async def _sink(self, chunk: bytes) -> None:
        while self._ahead >= self._ahead_bytes:
            self._room.clear()
            await self._room.wait()
        self._ahead += len(chunk)
        self._chunks.put_nowait(chunk)
        if self._gather and len(chunk) < _COPY_SMALL_READ:
            await asyncio.sleep(_COPY_GATHER_SECONDS)

    async def rows(self) -> AsyncIterator[list[memoryview | None]]:
        """The next statement's values (None: NULL), those of the whole rows each read
        brought (never none)."""
        rows = _BinaryRows()
        while True:
            async with asyncio.timeout(_COPY_WAIT_SECONDS):
                chunk = await self._chunks.get()
            if chunk is _RANGE_END:
                rows.end()
                return
            if chunk is None:  # the COPYs ended before this statement's did
                await self._task  # its error
                raise RuntimeError("COPY ended without its statement's rows")
            chunk = cast(bytes, chunk)  # the driver hands over bytes (a bytearray in fact)
            self._ahead -= len(chunk)
            self._room.set()
            values = rows.feed(chunk)
            if values:
                yield values

    def cancel(self) -> None:
        self._task.cancel()

    async def close(self) -> None:
        task = self._task
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: it is raised by rows(), or the rows were not wanted


class _BinaryRows:
    """The values of one ``COPY ... TO STDOUT (FORMAT binary)`` of one column, as its data
    arrives in reads that may end anywhere."""

    def __init__(self) -> None:
        self._rest = b""  # what the last reads brought of a row (or the header) not whole yet
        self._start = True  # the header is still to come

    def feed(self, chunk: bytes) -> list[memoryview | None]:
        """The values (None: NULL) of the rows ``chunk`` completes."""
        data = self._rest + chunk if self._rest else chunk
        at = 0
        if self._start:
            if len(data) >= _COPY_HEADER.size:
                signature, _, extension = _COPY_HEADER.unpack_from(data)
                if signature != _COPY_SIGNATURE:
                    raise RuntimeError("COPY data not in the binary format")
                at = _COPY_HEADER.size + extension
            if not at or len(data) < at:
                self._rest = bytes(data)
                return []
            self._start = False
        values, at = _values(data, at)
        self._rest = bytes(data[at:])
        return values

    def end(self) -> None:
        """The COPY has ended: it must have ended with its trailer, after whole rows."""
        if self._start or self._rest not in (b"", _COPY_TRAILER):
            raise RuntimeError("COPY ended within a row")


def _values(data: bytes, at: int) -> tuple[list[memoryview | None], int]:
    """The values (None: NULL) of the whole one-column rows of binary COPY data from ``at`` on,
    and where the first row not whole in ``data`` begins (or the trailer, when it ends it)."""
    view = memoryview(data)
    values: list[memoryview | None] = []
    append = values.append
    unpack = _COPY_ROW.unpack_from
    size = len(data)
    last = size - _COPY_ROW.size  # the last place a row's head fits
    while at <= last:
        columns, length = unpack(data, at)
        if columns != 1:
            if columns == -1:  # the trailer, followed by nothing of this statement
                at += 2
                continue
            raise RuntimeError("COPY row not one value")
        begin = at + _COPY_ROW.size
        if length < 0:
            append(None)
            at = begin
            continue
        end = begin + length
        if end > size:
            break
        append(view[begin:end])
        at = end
    return values, at
