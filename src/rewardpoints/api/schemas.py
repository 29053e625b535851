"""Pydantic models of Emporix's JSON, and the writers that turn ledger objects into it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
)

from ..config import MAX_POINTS
from ..ledger import CustomerSummary, Lot, NewLot, NewRedemption, Redemption


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _parse_timestamp(value: Any) -> datetime:
    """ISO 8601 text only (no epoch numbers); a timestamp without an offset is UTC."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2029-08-24T14:15:22Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


Text = Annotated[str, AfterValidator(_no_nul)]
EntryId = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_no_nul)]
Timestamp = Annotated[datetime, BeforeValidator(_parse_timestamp)]
Points = Annotated[StrictInt, Field(ge=1, le=MAX_POINTS, description="1 to 2,147,483,647")]


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=False)


class AddedPointsIn(_In):
    """An ``addedPoints`` request. ``createdAt``, ``allPointsAfterCreation``, ``usedPoints``
    and ``usedWith`` are computed by the server: accepted and ignored."""

    id: EntryId | None = None
    reference_id: Annotated[Text, Field(max_length=255)] | None = Field(
        default=None, alias="reference-id", description="Order Id for which the points were created"
    )
    description: Annotated[Text, Field(max_length=4096)] | None = None
    points: Points
    createdAt: Timestamp | None = None  # noqa: N815 - Emporix's field name
    validUntil: Timestamp | None = Field(  # noqa: N815
        default=None, description="The date until when the points can be redeemed"
    )
    allPointsAfterCreation: StrictInt | None = None  # noqa: N815
    usedPoints: StrictInt | None = None  # noqa: N815
    usedWith: list[Annotated[Text, Field(max_length=255)]] | None = Field(  # noqa: N815
        default=None, max_length=1000
    )

    def to_lot(self) -> NewLot:
        return NewLot(
            points=self.points,
            id=self.id,
            reference_id=self.reference_id,
            description=self.description,
            valid_until=self.validUntil,
        )


class RedeemedPointsIn(_In):
    """A ``redeemedPoints`` request; ``createdAt`` and ``allPointsAfterCreation`` are ignored."""

    id: EntryId | None = None
    description: Annotated[Text, Field(max_length=4096)] | None = None
    points: Points
    createdAt: Timestamp | None = None  # noqa: N815
    allPointsAfterCreation: StrictInt | None = None  # noqa: N815

    def to_redemption(self) -> NewRedemption:
        return NewRedemption(points=self.points, id=self.id, description=self.description)


class NewCustomerIn(_In):
    customerId: Annotated[Text, Field(max_length=255)] | None = None  # noqa: N815
    startPoints: AddedPointsIn | None = None  # noqa: N815


# ---- responses (documentation of what the writers below produce) ---------------------------


class AddedPointsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    reference_id: str | None = Field(alias="reference-id")
    description: str
    points: int
    createdAt: datetime  # noqa: N815
    allPointsAfterCreation: int  # noqa: N815
    usedPoints: int  # noqa: N815
    validUntil: datetime  # noqa: N815
    usedWith: list[str]  # noqa: N815


class RedeemedPointsOut(BaseModel):
    id: str
    description: str
    points: int
    createdAt: datetime  # noqa: N815
    allPointsAfterCreation: int  # noqa: N815


class CustomerSummaryOut(BaseModel):
    addedPointsList: list[AddedPointsOut]  # noqa: N815
    redeemedPointsList: list[RedeemedPointsOut]  # noqa: N815


class PointsSummaryOut(BaseModel):
    customerId: str  # noqa: N815
    activePoints: int  # noqa: N815
    summary: CustomerSummaryOut


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
