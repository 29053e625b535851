"""Pydantic models of Emporix's JSON, and the writers that turn ledger objects into it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from ..config import MAX_POINTS
from ..ledger import AwardedOrder, NewLot, NewRedemption
from ..redeem_options import RedeemOption, RedeemOptionContent
from ..rewards import Order


def _no_nul(value: str) -> str:
    """Text that a database and a UTF-8 response can hold: no NUL, and no unpaired surrogate
    (which a JSON escape such as ``\\ud800`` decodes to)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (it has an unpaired surrogate)") from None
    return value


MAX_JSON_DEPTH = 32


def _plain_json(value: Any) -> Any:
    """JSON that is kept and passed on as it came (a coupon template): text as ``_no_nul``
    wants it, keys included, finite numbers only, and objects and arrays at most
    ``MAX_JSON_DEPTH`` levels deep, so it can be stored and written out again."""
    pending: list[tuple[str, Any, int]] = [("", value, 1)]
    while pending:
        path, item, depth = pending.pop()
        where = f"{path}: " if path else ""
        if isinstance(item, dict | list) and depth > MAX_JSON_DEPTH:
            raise ValueError(f"{where}nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            if isinstance(item, str):
                _no_nul(item)
            elif isinstance(item, float):
                _finite(item)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        if isinstance(item, dict):
            for key, inner in item.items():
                name = f"{path}.{key}" if path else str(key)
                if isinstance(key, str):
                    try:
                        _no_nul(key)
                    except ValueError as error:
                        raise ValueError(f"{where}a member name {error}") from None
                pending.append((name, inner, depth + 1))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", inner, depth + 1) for i, inner in enumerate(item))
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
Reason = Annotated[
    Text,
    Field(
        max_length=1024,
        description="Why the balance changes; recorded in the customer's history (an extension"
        " to Emporix's model).",
    ),
]


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
    reason: Reason | None = None

    def to_lot(self) -> NewLot:
        return NewLot(
            points=self.points,
            id=self.id,
            reference_id=self.reference_id,
            description=self.description,
            valid_until=self.validUntil,
            reason=self.reason,
        )


class RedeemedPointsIn(_In):
    """A ``redeemedPoints`` request; ``createdAt`` and ``allPointsAfterCreation`` are ignored."""

    id: EntryId | None = None
    description: Annotated[Text, Field(max_length=4096)] | None = None
    points: Points
    createdAt: Timestamp | None = None  # noqa: N815
    allPointsAfterCreation: StrictInt | None = None  # noqa: N815
    reason: Reason | None = None

    def to_redemption(self) -> NewRedemption:
        return NewRedemption(
            points=self.points, id=self.id, description=self.description, reason=self.reason
        )


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


# ---- redeem options, the signed-in customer's redeem, orders ---------------------------------


def _iso_text(value: str) -> str:
    """An ISO 8601 date-time, kept as written (it is passed on to the coupon as is)."""
    _parse_timestamp(value)
    return value


def _finite(value: float | int) -> float | int:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _whole_number(value: Any) -> int:
    """A JSON number without a fractional part: Emporix types coupon counts as numbers, so
    ``1.0`` is one; ``1.5``, text and booleans are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number (-1 for unlimited)")
        return int(value)
    return value


def _order_amount(value: Any) -> Decimal:
    """A JSON number (not a string, not a boolean), read exactly as written."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_no_nul)]
LocalizedText = (
    Annotated[Text, Field(max_length=4096)] | dict[str, Annotated[Text, Field(max_length=4096)]]
)
Number = Annotated[StrictInt | StrictFloat, AfterValidator(_finite)]
# A constrained union writes its bounds as pydantic's own keywords (ge, le): the schemas below
# state them in JSON Schema's.
NonNegativeNumber = Annotated[Number, Field(ge=0), WithJsonSchema({"type": "number", "minimum": 0})]
Percentage = Annotated[
    Number,
    Field(ge=0, le=100),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100}),
]
WholeNumber = Annotated[int, BeforeValidator(_whole_number), WithJsonSchema({"type": "integer"})]
Currency = Annotated[str, Field(pattern=r"^[a-zA-Z]{3}$", description="ISO 4217, e.g. EUR")]
IsoText = Annotated[
    str, AfterValidator(_iso_text), WithJsonSchema({"type": "string", "format": "date-time"})
]
OrderAmount = Annotated[
    Decimal,
    BeforeValidator(_order_amount),
    Field(ge=0),
    WithJsonSchema({"type": "number", "minimum": 0}),
]
DEFAULT_CURRENCY = "USD"


class MoneyAmountIn(_In):
    """Emporix's Money Amount; as in its schema, ``amount`` defaults to 0 and ``currency`` to
    USD. The defaults are written into the stored coupon, so the Coupon Service and the
    storefront read the same amount."""

    amount: NonNegativeNumber = 0
    currency: Currency = DEFAULT_CURRENCY

    @model_validator(mode="before")
    @classmethod
    def _with_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {"amount": 0, "currency": DEFAULT_CURRENCY, **data}
        return data


class CouponRestrictionsIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    validFor: list[Annotated[Text, Field(max_length=255)]] | None = None  # noqa: N815
    validFrom: IsoText | None = None  # noqa: N815
    validUntil: IsoText | None = None  # noqa: N815
    minOrderValue: MoneyAmountIn | None = None  # noqa: N815


DISCOUNT_TYPES = ("PERCENT", "ABSOLUTE")


class CouponTemplateIn(BaseModel):
    """The coupon a redeem option turns into: Emporix's coupon model. Fields of the Coupon
    Service that this model does not name are kept and passed on."""

    model_config = ConfigDict(extra="allow")

    name: LocalizedText
    description: LocalizedText | None = None
    discountType: Annotated[  # noqa: N815
        str,
        Field(
            description="PERCENT or ABSOLUTE (FREE_SHIPPING cannot be obtained with points)",
            json_schema_extra={"enum": list(DISCOUNT_TYPES)},
        ),
    ]
    discountPercentage: Percentage | None = None  # noqa: N815
    discountAbsolute: MoneyAmountIn | None = None  # noqa: N815
    allowAnonymous: StrictBool | None = None  # noqa: N815
    maxRedemptions: WholeNumber | None = None  # noqa: N815
    maxRedemptionsPerCustomer: WholeNumber | None = None  # noqa: N815
    restrictions: CouponRestrictionsIn | None = None
    status: Literal["INACTIVE", "VALID", "EXPIRED", "USED"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        return _plain_json(data)

    @model_validator(mode="after")
    def _discount_matches_type(self) -> CouponTemplateIn:
        if self.discountType == "FREE_SHIPPING":
            raise ValueError("only PERCENT and ABSOLUTE coupons can be obtained with points")
        if self.discountType == "PERCENT":
            if self.discountPercentage is None:
                raise ValueError("a PERCENT coupon needs discountPercentage")
            if self.discountAbsolute is not None:
                raise ValueError("discountAbsolute is only for ABSOLUTE coupons")
        elif self.discountType == "ABSOLUTE":
            if self.discountAbsolute is None:
                raise ValueError("an ABSOLUTE coupon needs discountAbsolute")
            if self.discountPercentage is not None:
                raise ValueError("discountPercentage is only for PERCENT coupons")
        else:
            raise ValueError("discountType must be PERCENT or ABSOLUTE")
        return self


class RedeemOptionMetadataIn(_In):
    # Versions start at 1 and are stored as bigint: another number can never be current.
    version: Annotated[StrictInt, Field(ge=1, le=2**63 - 1)] | None = None


class RedeemOptionIn(_In):
    """A ``redeemOption``. ``id``, ``pointsAfterCoupon`` and the metadata timestamps are the
    server's; ``metadata.version``, when given on an update, must be the current version."""

    id: Annotated[Text, Field(max_length=255)] | None = None
    type: Annotated[NonEmptyText, Field(max_length=255, description="Typically 'coupon'")]
    name: Annotated[NonEmptyText, Field(max_length=1024)]
    description: Annotated[Text, Field(max_length=4096)] | None = None
    points: Points
    coupon: CouponTemplateIn | None = None
    pointsAfterCoupon: StrictInt | None = None  # noqa: N815
    metadata: RedeemOptionMetadataIn | None = None

    def content(self) -> RedeemOptionContent:
        coupon = (
            self.coupon.model_dump(mode="json", exclude_unset=True, exclude_none=True)
            if self.coupon
            else None
        )
        return RedeemOptionContent(self.type, self.name, self.description, self.points, coupon)

    @property
    def expected_version(self) -> int | None:
        return self.metadata.version if self.metadata is not None else None


class RedeemOptionMetadataOut(BaseModel):
    version: int
    createdAt: str  # noqa: N815
    modifiedAt: str  # noqa: N815


def _no_default(schema: JsonDict) -> None:
    schema.pop("default", None)


# A member the writer leaves out when it has no value (never ``null``, as Emporix writes it).
Omitted = SkipJsonSchema[None]


class RedeemOptionOut(BaseModel):
    id: str
    type: str
    name: str
    description: str | Omitted = Field(default=None, json_schema_extra=_no_default)
    points: int
    coupon: dict[str, Any] | Omitted = Field(default=None, json_schema_extra=_no_default)
    pointsAfterCoupon: int | Omitted = Field(  # noqa: N815
        default=None,
        description="The customer's active points minus `points` (customers only)",
        json_schema_extra=_no_default,
    )
    metadata: RedeemOptionMetadataOut


class RedeemIn(_In):
    """The redeem option to spend points on: ``id``, as Emporix's spec names it, or
    ``redeemOptionId``, as some clients send it."""

    id: Annotated[NonEmptyText, Field(max_length=255)] = Field(
        description="The ID of the redeem option used to convert points into a coupon."
    )
    redeemOptionId: Annotated[NonEmptyText, Field(max_length=255)] | Omitted = Field(  # noqa: N815
        default=None,
        description="Accepted in place of `id`; when both are given they must be equal.",
        json_schema_extra=_no_default,
    )

    @model_validator(mode="before")
    @classmethod
    def _id_from_alias(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("redeemOptionId") is None:
            return data
        if data.get("id") is None:
            return {**data, "id": data["redeemOptionId"]}
        if data["id"] != data["redeemOptionId"]:
            raise PydanticCustomError(
                "redeem_option_id_conflict",
                "id and redeemOptionId name different redeem options: give one of them",
            )
        return data


class RedeemCouponOut(BaseModel):
    code: str = Field(description="Coupon code received after exchanging points")


class OrderTotalIn(_In):
    amount: OrderAmount
    currency: Currency


class OrderIn(_In):
    orderId: EntryId  # noqa: N815
    total: OrderTotalIn
    status: Annotated[NonEmptyText, Field(max_length=64, description="e.g. COMPLETED")]

    def to_order(self) -> Order:
        return Order(self.orderId, self.total.amount, self.total.currency, self.status)


class OrderAwardOut(BaseModel):
    orderId: str  # noqa: N815
    customerId: str  # noqa: N815
    points: int
    addedPointsId: str | None  # noqa: N815


def zulu(moment: datetime) -> str:
    """``2023-07-25T13:28:25.960Z``, the form Emporix uses in redeem-option metadata."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redeem_option_json(option: RedeemOption, active_points: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": option.id, "type": option.type, "name": option.name}
    if option.description is not None:
        body["description"] = option.description
    body["points"] = option.points
    if option.coupon is not None:
        body["coupon"] = option.coupon
    if active_points is not None:
        body["pointsAfterCoupon"] = active_points - option.points
    body["metadata"] = {
        "version": option.version,
        "createdAt": zulu(option.created_at),
        "modifiedAt": zulu(option.modified_at),
    }
    return body


def order_award_json(award: AwardedOrder) -> dict[str, Any]:
    return {
        "orderId": award.order_id,
        "customerId": award.customer_id,
        "points": award.points,
        "addedPointsId": award.lot_id,
    }
