"""The ledger's reports: a customer's history, its balance at an instant, the points about to
expire, and the tenant's liability. Each is one call of a database function
(src/rewardpoints/sql/) on the engine given: the primary's, or a read replica's for the heavy
ones (replica.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import read_transaction, single_read
from .errors import CustomerNotFound, InvalidRequest


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    kind: str
    id: str
    points: int
    created_at: datetime
    balance_after: int
    reference_id: str | None
    reason: str | None
    actor: str | None


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """Where a history page ends: its last entry's time, and a journal entry's sequence number
    or an expired lot's id (rewardpoints_history)."""

    at: datetime
    seq: int | None
    lot_id: str | None

    def encode(self) -> str:
        raw = json.dumps([self.at.isoformat(), self.seq, self.lot_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> HistoryCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            at, seq, lot_id = json.loads(raw)
            cursor = cls(datetime.fromisoformat(at), seq, lot_id)
            valid = (
                cursor.at.tzinfo is not None
                and (seq is None) != (lot_id is None)
                and (seq is None or (type(seq) is int and 0 < seq < 2**63))
                and (lot_id is None or (isinstance(lot_id, str) and 0 < len(lot_id) <= 255))
            )
        except (ValueError, TypeError, UnicodeDecodeError):
            valid = False
        if not valid:
            raise InvalidRequest("cursor is not one this service gave", field="cursor")
        return cursor


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryEntry]
    next: HistoryCursor | None


@dataclass(frozen=True, slots=True)
class ExpiringLot:
    id: str
    points: int
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class ExpiringCustomer:
    customer_id: str
    points: int
    earliest: datetime


@dataclass(frozen=True, slots=True)
class MonthFlow:
    month: str  # YYYY-MM, UTC
    issued: int = 0
    redeemed: int = 0
    reversed: int = 0
    deducted: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class Liability:
    at: datetime
    outstanding_points: int
    customers: int
    debt_points: int
    customers_in_debt: int
    expiring: list[tuple[str, int]]  # (YYYY-MM, points), from the month of ``at`` on
    months: list[MonthFlow]  # up to the month of ``at``, oldest first


HISTORY_KINDS = ("added", "chargeback", "redeemed", "reversed", "deducted", "expired")


async def history(
    engine: AsyncEngine,
    tenant: str,
    customer_id: str,
    *,
    limit: int,
    cursor: HistoryCursor | None = None,
    kinds: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> HistoryPage:
    """A page of the customer's history, newest first (rewardpoints_history)."""
    params = {
        "tenant": tenant,
        "customer": customer_id,
        "limit": limit + 1,
        "at": cursor.at if cursor else None,
        "phase": None if cursor is None else (1 if cursor.seq is not None else 0),
        "seq": cursor.seq if cursor else None,
        "lot": cursor.lot_id if cursor else None,
        "kinds": list(kinds) if kinds else None,
        "since": since,
        "until": until,
    }
    async with read_transaction(engine) as conn:
        entries = (await conn.execute(_HISTORY_CALL, params)).all()
        # An empty page may be a customer without an entry.
        if not entries and not (await conn.execute(_ACCOUNT_EXISTS, params)).scalar_one():
            raise CustomerNotFound(customer_id)
    items = [
        HistoryEntry(
            row.kind,
            row.entry_id,
            int(row.points),
            row.created_at,
            int(row.balance_after),
            row.reference_id,
            row.reason,
            row.actor,
        )
        for row in entries[:limit]
    ]
    following = None
    if len(entries) > limit:
        last = entries[limit - 1]
        following = HistoryCursor(
            last.created_at,
            int(last.seq) if last.phase == 1 else None,
            None if last.phase == 1 else last.entry_id,
        )
    return HistoryPage(items, following)


async def balance_at(
    engine: AsyncEngine, tenant: str, customer_id: str, at: datetime | None
) -> tuple[int, datetime]:
    """The customer's balance as it stood at ``at`` (rewardpoints_balance_at); now when
    None. Returns the balance and the instant."""
    params = {"tenant": tenant, "customer": customer_id, "at": at}
    async with single_read(engine) as conn:
        row = (await conn.execute(_BALANCE_AT_CALL, params)).one()
    if row[0] is None:
        raise CustomerNotFound(customer_id)
    return int(row[0]), row[1]


async def expiring_lots(
    engine: AsyncEngine, tenant: str, customer_id: str, before: datetime
) -> list[ExpiringLot]:
    """The customer's lots with points left that expire before ``before``."""
    async with read_transaction(engine) as conn:
        params = {"tenant": tenant, "customer": customer_id, "before": before}
        found = await conn.execute(_ACCOUNT_EXISTS, params)
        if not found.scalar_one():
            raise CustomerNotFound(customer_id)
        rows = await conn.execute(_EXPIRING_LOTS_CALL, params)
        return [ExpiringLot(row[0], int(row[1]), row[2]) for row in rows]


async def expiring_customers(
    engine: AsyncEngine,
    tenant: str,
    before: datetime,
    *,
    batch: int = 1000,
) -> AsyncGenerator[ExpiringCustomer, None]:
    """Every customer of the tenant with points expiring before ``before``, by customer
    id, read from PostgreSQL ``batch`` rows at a time
    as they are consumed."""
    async with read_transaction(engine) as conn:
        result = await conn.stream(
            _EXPIRING_CUSTOMERS_CALL.execution_options(yield_per=batch),
            {"tenant": tenant, "before": before},
        )
        async for row in result:
            yield ExpiringCustomer(row[0], int(row[1]), row[2])


async def liability(engine: AsyncEngine, tenant: str, months: int) -> Liability:
    """The tenant's finance figures (rewardpoints_liability)."""
    async with read_transaction(engine, snapshot=True) as conn:
        now: datetime = (await conn.execute(_READ_NOW)).scalar_one()
        rows = (
            await conn.execute(_LIABILITY_CALL, {"tenant": tenant, "now": now, "months": months})
        ).all()
    figures: dict[str, tuple[int, int]] = {}
    expiring: dict[str, int] = {}
    flows: dict[str, dict[str, int]] = {}
    for section, month, kind, points, customers in rows:
        if section in ("outstanding", "debt"):
            figures[section] = (int(points), int(customers))
        elif section == "expiring":
            expiring[_month(month)] = int(points)
        else:
            flows.setdefault(_month(month), {})[kind] = int(points)
    this_month = now.astimezone(UTC)
    ahead = [_month_after(this_month, n) for n in range(months)]
    behind = [_month_after(this_month, -n) for n in reversed(range(months))]
    return Liability(
        at=now,
        outstanding_points=figures["outstanding"][0],
        customers=figures["outstanding"][1],
        debt_points=figures["debt"][0],
        customers_in_debt=figures["debt"][1],
        expiring=[(month, expiring.get(month, 0)) for month in ahead],
        months=[MonthFlow(month, **flows.get(month, {})) for month in behind],
    )


def _month(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def _month_after(moment: datetime, months: int) -> str:
    total = moment.year * 12 + moment.month - 1 + months
    return f"{total // 12:04d}-{total % 12 + 1:02d}"


_HISTORY_CALL = text(
    "SELECT * FROM rewardpoints_history(:tenant, :customer, rewardpoints_read_now(), :limit,"
    " :at, :phase, :seq, :lot, :kinds, :since, :until)"
)
_BALANCE_AT_CALL = text(
    "SELECT rewardpoints_balance_at(:tenant, :customer, c.at), c.at"
    " FROM (SELECT COALESCE(CAST(:at AS timestamptz), rewardpoints_read_now()) AS at) c"
)
_EXPIRING_LOTS_CALL = text(
    "SELECT * FROM rewardpoints_expiring_lots(:tenant, :customer, rewardpoints_read_now(), :before)"
)
_EXPIRING_CUSTOMERS_CALL = text(
    "SELECT * FROM rewardpoints_expiring_customers(:tenant, rewardpoints_read_now(), :before)"
)
_LIABILITY_CALL = text("SELECT * FROM rewardpoints_liability(:tenant, :now, :months)")
_READ_NOW = text("SELECT rewardpoints_read_now()")
_ACCOUNT_EXISTS = text(
    "SELECT EXISTS (SELECT 1 FROM accounts WHERE tenant = :tenant AND customer_id = :customer)"
)
