"""The JSON of the operations beyond Emporix's API (api/extensions.py), and of dry runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from ..ledger import Deduction, NewDeduction, NewReversal, Preview, Reversal
from ..reports import ExpiringCustomer, ExpiringLot, HistoryEntry, HistoryPage, Liability
from .schemas import EntryId, Points, Reason, Text, _In

DryRun = Annotated[
    bool,
    Query(
        alias="dryRun",
        description="Answer 200 with what the write would do now (balance before and after, the"
        " lots it would draw from or give back to), and write nothing.",
    ),
]


def wire_time(moment: datetime) -> str:
    """CONTRACT 1: UTC, milliseconds, explicit offset."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


# ---- requests ------------------------------------------------------------------------------


class ReversalIn(_In):
    redemptionId: EntryId = Field(  # noqa: N815
        description="The id of the redemption to reverse (not a deduction's)."
    )
    points: Points | None = Field(
        default=None, description="Default: all the redemption still holds."
    )
    id: EntryId | None = None
    reason: Reason | None = None

    def to_reversal(self) -> NewReversal:
        return NewReversal(self.redemptionId, self.points, self.id, self.reason)


class DeductionIn(_In):
    points: Points
    id: EntryId | None = None
    reference_id: Annotated[Text, Field(max_length=255)] | None = Field(
        default=None, alias="reference-id", description="e.g. the return's or the order's id"
    )
    lotId: EntryId | None = Field(  # noqa: N815
        default=None, description="The lot to take from first, e.g. the lot the order earned."
    )
    reason: Reason | None = None

    def to_deduction(self) -> NewDeduction:
        return NewDeduction(self.points, self.id, self.reference_id, self.lotId, self.reason)


# ---- responses -----------------------------------------------------------------------------


class PreviewLotOut(BaseModel):
    id: str | None = Field(description="The lot's id; null for a new lot the server would name.")
    points: int


class PreviewOut(BaseModel):
    balanceBefore: int  # noqa: N815
    balanceAfter: int  # noqa: N815
    lots: list[PreviewLotOut]


class ReversalOut(BaseModel):
    id: str
    restoredPoints: int  # noqa: N815
    expiredPoints: int = Field(  # noqa: N815
        description="Points that went back to lots expired since: they do not count."
    )


class DeductionOut(BaseModel):
    id: str
    points: int
    balanceAfter: int = Field(  # noqa: N815
        description="Negative when the site allows a negative balance and the points were short."
    )


class HistoryItemOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    kind: str = Field(
        description="added, chargeback, redeemed, reversed, deducted or expired; points are"
        " never negative, the kind says which way they went."
    )
    id: str = Field(description="The entry's id; an expired entry's is its lot's.")
    points: int
    createdAt: datetime  # noqa: N815
    balanceAfter: int  # noqa: N815
    reference_id: str | None = Field(alias="reference-id")
    reason: str | None
    actor: str | None = Field(description="The token's sub, or the customer of a customer token.")


class HistoryOut(BaseModel):
    items: list[HistoryItemOut]
    next: str | None = Field(description="The cursor of the next page; null on the last.")


class BalanceAtOut(BaseModel):
    customerId: str  # noqa: N815
    activePoints: int  # noqa: N815
    at: datetime


class ExpiringLotOut(BaseModel):
    id: str
    points: int
    validUntil: datetime  # noqa: N815


class ExpiringPointsOut(BaseModel):
    customerId: str  # noqa: N815
    before: datetime
    totalPoints: int  # noqa: N815
    lots: list[ExpiringLotOut]


class ExpiringCustomerOut(BaseModel):
    customerId: str  # noqa: N815
    totalPoints: int  # noqa: N815
    earliestValidUntil: datetime  # noqa: N815


class ExpiringMonthOut(BaseModel):
    month: str = Field(description="YYYY-MM, UTC")
    points: int


class LiabilityMonthOut(BaseModel):
    month: str = Field(description="YYYY-MM, UTC")
    issued: int
    redeemed: int
    reversed: int
    deducted: int
    expired: int = Field(description="Breakage: points that expired unspent.")


class LiabilityOut(BaseModel):
    at: datetime
    outstandingPoints: int  # noqa: N815
    customers: int = Field(description="Customers with a balance above zero.")
    debtPoints: int  # noqa: N815
    customersInDebt: int  # noqa: N815
    expiring: list[ExpiringMonthOut]
    months: list[LiabilityMonthOut]


DRY_RUN_ANSWER: dict[str, Any] = {
    "model": PreviewOut,
    "description": "dryRun: what the write would do now; nothing written.",
}


# ---- writers -------------------------------------------------------------------------------


def preview_json(preview: Preview) -> dict[str, Any]:
    return {
        "balanceBefore": preview.balance_before,
        "balanceAfter": preview.balance_after,
        "lots": [{"id": lot_id, "points": points} for lot_id, points in preview.lots],
    }


def reversal_json(reversal: Reversal) -> dict[str, Any]:
    return {
        "id": reversal.id,
        "restoredPoints": reversal.restored_points,
        "expiredPoints": reversal.expired_points,
    }


def deduction_json(deduction: Deduction) -> dict[str, Any]:
    return {"id": deduction.id, "points": deduction.points, "balanceAfter": deduction.balance_after}


def history_item_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "id": entry.id,
        "points": entry.points,
        "createdAt": wire_time(entry.created_at),
        "balanceAfter": entry.balance_after,
        "reference-id": entry.reference_id,
        "reason": entry.reason,
        "actor": entry.actor,
    }


def history_json(page: HistoryPage) -> dict[str, Any]:
    return {
        "items": [history_item_json(entry) for entry in page.items],
        "next": page.next.encode() if page.next else None,
    }


def expiring_points_json(
    customer_id: str, before: datetime, lots: list[ExpiringLot]
) -> dict[str, Any]:
    return {
        "customerId": customer_id,
        "before": wire_time(before),
        "totalPoints": sum(lot.points for lot in lots),
        "lots": [
            {"id": lot.id, "points": lot.points, "validUntil": wire_time(lot.valid_until)}
            for lot in lots
        ],
    }


def expiring_customer_json(customer: ExpiringCustomer) -> dict[str, Any]:
    return {
        "customerId": customer.customer_id,
        "totalPoints": customer.points,
        "earliestValidUntil": wire_time(customer.earliest),
    }


def liability_json(liability: Liability) -> dict[str, Any]:
    return {
        "at": wire_time(liability.at),
        "outstandingPoints": liability.outstanding_points,
        "customers": liability.customers,
        "debtPoints": liability.debt_points,
        "customersInDebt": liability.customers_in_debt,
        "expiring": [{"month": month, "points": points} for month, points in liability.expiring],
        "months": [
            {
                "month": flow.month,
                "issued": flow.issued,
                "redeemed": flow.redeemed,
                "reversed": flow.reversed,
                "deducted": flow.deducted,
                "expired": flow.expired,
            }
            for flow in liability.months
        ],
    }
