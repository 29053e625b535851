"""Customer summaries as Emporix's ``pointsSummaryOut`` JSON documents.

On PostgreSQL the database writes each document itself, one row per customer, so a summary of
100,000 lots or a tenant of millions is not turned into Python objects row by row; on SQLite
the ledger's objects are written out here. Both produce the same bytes (the API tests compare
them byte for byte on both databases).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from .db import read_transaction, single_read
from .errors import CustomerNotFound
from .ledger import STREAM_CHUNK_ROWS, CustomerSummary, Ledger, Lot, Redemption


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


# One row per customer: its document, built by PostgreSQL with the key order and compact
# separators of ``dumps`` above; to_json escapes strings as json.dumps(ensure_ascii=False) does.
_DOCUMENTS = f"""
SELECT a.customer_id,
       '{{"customerId":' || to_json(a.customer_id::text)::text
       || ',"activePoints":' || COALESCE(l.active, 0)::text
       || ',"summary":{{"addedPointsList":[' || COALESCE(l.items, '')
       || '],"redeemedPointsList":[' || COALESCE(r.items, '') || ']}}}}' AS document
FROM accounts a
LEFT JOIN LATERAL (
    SELECT SUM(CASE WHEN lo.valid_until > :now THEN lo.points - lo.used_points ELSE 0 END)
               AS active,
           string_agg(
               '{{"id":' || to_json(lo.id::text)::text
               || ',"reference-id":' || COALESCE(to_json(lo.reference_id)::text, 'null')
               || ',"description":' || to_json(lo.description)::text
               || ',"points":' || lo.points::text
               || ',"createdAt":' || {_stamp("lo.created_at")}
               || ',"allPointsAfterCreation":' || lo.all_points_after_creation::text
               || ',"usedPoints":' || lo.used_points::text
               || ',"validUntil":' || {_stamp("lo.valid_until")}
               || ',"usedWith":[' || COALESCE((
                      SELECT string_agg(to_json(u.redemption_id::text)::text, ','
                                        ORDER BY u.created_at, u.redemption_id)
                      FROM lot_usages u
                      WHERE u.tenant = lo.tenant AND u.lot_id = lo.id), '') || ']}}',
               ',' ORDER BY lo.created_at, lo.id) AS items
    FROM lots lo
    WHERE lo.tenant = a.tenant AND lo.customer_id = a.customer_id
) l ON true
LEFT JOIN LATERAL (
    SELECT string_agg(
               '{{"id":' || to_json(re.id::text)::text
               || ',"description":' || to_json(re.description)::text
               || ',"points":' || re.points::text
               || ',"createdAt":' || {_stamp("re.created_at")}
               || ',"allPointsAfterCreation":' || re.all_points_after_creation::text || '}}',
               ',' ORDER BY re.created_at, re.id) AS items
    FROM redemptions re
    WHERE re.tenant = a.tenant AND re.customer_id = a.customer_id
) r ON true
WHERE a.tenant = :tenant
"""
_ONE_DOCUMENT = text(_DOCUMENTS + " AND a.customer_id = :customer")
_ALL_DOCUMENTS = text(_DOCUMENTS + " ORDER BY a.customer_id")


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
    """Every customer's document, ordered by customer id, from one server-side cursor."""
    if not _in_database(ledger):
        async for summary in ledger.stream_summaries(tenant):
            yield dumps(summary_json(summary))
        return
    params = {"tenant": tenant, "now": ledger.clock()}
    async with read_transaction(ledger.engine) as conn:
        result = await conn.stream(_ALL_DOCUMENTS, params)
        async for chunk in result.partitions(STREAM_CHUNK_ROWS // 10):
            for row in chunk:
                yield str(row.document).encode()
