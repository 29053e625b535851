"""A pure-Python model of CONTRACT.md section 2, for the model-based tests.

It shares no code with ``rewardpoints``: it is a second, deliberately naive reading of the
ledger rules (FIFO draws, expiry, ``allPointsAfterCreation``, safe retries, 404/409/400,
reversals and deductions, the balance at a past instant), held in lists and dicts. What the
model cannot know in advance (a server-made id, the exact ``createdAt`` within a request) it
learns from the API once, through :meth:`TenantLedger.bind`, after checking that the value is
plausible.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

MAX_POINTS = 2_147_483_647
DEFAULT_ADD_DESCRIPTION = "points added"
DEFAULT_REDEEM_DESCRIPTION = "points redeemed"
DEFAULT_DEDUCT_DESCRIPTION = "points deducted"


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later; a day the target month lacks becomes its last day."""
    total = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(total, 12)
    last_day = calendar.monthrange(year, month + 1)[1]
    return moment.replace(year=year, month=month + 1, day=min(moment.day, last_day))


def wire_time(moment: datetime) -> str:
    """CONTRACT 1: UTC, milliseconds, explicit offset."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+00:00"


@dataclass(frozen=True)
class LotRequest:
    points: int
    id: str | None = None
    reference_id: str | None = None
    description: str | None = None
    valid_until: datetime | None = None

    def content(self, customer_id: str) -> tuple[Any, ...]:
        return (
            "lot",
            customer_id,
            self.points,
            self.reference_id,
            self.description,
            self.valid_until,
        )


@dataclass(frozen=True)
class RedemptionRequest:
    points: int
    id: str | None = None
    description: str | None = None

    def content(self, customer_id: str) -> tuple[Any, ...]:
        return ("redemption", customer_id, self.points, self.description)


@dataclass(frozen=True)
class DeductionRequest:
    points: int
    id: str | None = None
    reference_id: str | None = None
    lot_id: str | None = None
    reason: str | None = None

    def content(self, customer_id: str) -> tuple[Any, ...]:
        return ("deduction", customer_id, self.points, self.reference_id, self.lot_id)


@dataclass(frozen=True)
class ReversalRequest:
    redemption_id: str
    points: int | None = None
    id: str | None = None
    reason: str | None = None

    def content(self, customer_id: str) -> tuple[Any, ...]:
        return ("reversal", customer_id, self.redemption_id, self.points)


@dataclass(eq=False)
class Redemption:
    content: tuple[Any, ...]
    id: str | None
    description: str
    points: int
    all_points_after_creation: int
    draws: list[tuple[Lot, int]]  # what it still holds of each lot, in drawing order
    created_at: datetime | None = None
    deducted: bool = False
    reversed_points: int = 0


@dataclass(eq=False)
class Reversal:
    content: tuple[Any, ...]
    id: str | None
    answer: dict[str, Any]  # restoredPoints and expiredPoints, as first answered


@dataclass(eq=False)
class Lot:
    content: tuple[Any, ...]
    id: str | None
    reference_id: str | None
    description: str
    points: int
    valid_until: datetime | None  # None until bound, when the site's default applies
    all_points_after_creation: int
    used_points: int = 0
    used_with: list[Redemption] = field(default_factory=list)
    created_at: datetime | None = None
    written_at: datetime | None = None  # the clock when its request was sent
    # Each change of usedPoints and the clock when its request was sent: the lot's usedPoints
    # at an instant is the sum of the changes made by then.
    changes: list[tuple[datetime, int]] = field(default_factory=list)

    def expired(self, now: datetime) -> bool:
        # A lot that has not been bound yet has just been written with the default validity.
        return self.valid_until is not None and now >= self.valid_until

    def remaining(self) -> int:
        return self.points - self.used_points


Entry = Lot | Redemption


@dataclass
class Customer:
    lots: list[Lot] = field(default_factory=list)
    redemptions: list[Redemption] = field(default_factory=list)
    reversals: list[Reversal] = field(default_factory=list)


@dataclass(frozen=True)
class Error:
    status: int
    kind: str  # invalid, insufficient, not_found, exists, id_conflict, no_redemption
    requested: int | None = None
    available: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What the API must answer, and the entry it must have written (if any).

    A request that breaks several rules may be refused for any one of them (the contract
    does not rank them), so ``errors`` lists every refusal that applies; a refused request
    changes nothing, whichever it is."""

    status: int = 0
    errors: tuple[Error, ...] = ()
    written: Entry | None = None
    answer: dict[str, Any] | None = None  # the JSON a 201 answers, when it has a body
    reversal: Reversal | None = None  # a reversal written now, whose id the answer tells

    @property
    def statuses(self) -> set[int]:
        return {error.status for error in self.errors} or {self.status}


def refused(*errors: Error | None) -> Outcome | None:
    applying = tuple(error for error in errors if error is not None)
    return Outcome(errors=applying) if applying else None


INVALID = Error(400, "invalid")
NOT_FOUND = Error(404, "not_found")
EXISTS = Error(409, "exists")
ID_CONFLICT = Error(409, "id_conflict")

OK_ADD = 201
OK_CREATE = 200


class TenantLedger:
    """One tenant's customers, their lots and redemptions."""

    def __init__(self, validity_months: int) -> None:
        self.validity_months = validity_months
        self.customers: dict[str, Customer] = {}

    # ---- reads -------------------------------------------------------------------------

    def entries(self) -> list[tuple[str, Entry]]:
        found: list[tuple[str, Entry]] = []
        for customer_id, customer in self.customers.items():
            found += [(customer_id, lot) for lot in customer.lots]
            found += [(customer_id, redemption) for redemption in customer.redemptions]
        return found

    def entry(self, customer_id: str, entry_id: str) -> Entry | Reversal | None:
        """The customer's entry with this id: ids are unique per customer, across lots,
        redemptions (deductions among them) and reversals together."""
        for owner, found in self.entries():
            if owner == customer_id and found.id == entry_id:
                return found
        customer = self.customers.get(customer_id)
        for reversal in customer.reversals if customer else []:
            if reversal.id == entry_id:
                return reversal
        return None

    def balance_at(self, customer_id: str, moment: datetime) -> int:
        """The balance as it stood at ``moment``: every lot written by then and not expired
        then, with the usedPoints it had then."""
        customer = self.customers[customer_id]
        balance = 0
        for lot in customer.lots:
            assert lot.written_at is not None
            if lot.written_at > moment or lot.expired(moment):
                continue
            balance += lot.points - sum(change for when, change in lot.changes if when <= moment)
        return balance

    def active_points(self, customer_id: str, now: datetime) -> int:
        customer = self.customers.get(customer_id)
        if customer is None:
            return 0
        return sum(lot.remaining() for lot in customer.lots if not lot.expired(now))

    def valid_until_moments(self) -> list[datetime]:
        return [
            entry.valid_until
            for _, entry in self.entries()
            if isinstance(entry, Lot) and entry.valid_until is not None
        ]

    def summary_json(self, customer_id: str, now: datetime) -> dict[str, Any]:
        customer = self.customers[customer_id]
        return {
            "customerId": customer_id,
            "activePoints": self.active_points(customer_id, now),
            "summary": {
                "addedPointsList": [_lot_json(lot) for lot in customer.lots],
                "redeemedPointsList": [_redemption_json(r) for r in customer.redemptions],
            },
        }

    # ---- writes ------------------------------------------------------------------------

    def add(self, customer_id: str, request: LotRequest, now: datetime) -> Outcome:
        retry = self._retry(customer_id, request.id, request.content(customer_id))
        if retry and _points_ok(request.points):
            return Outcome(OK_ADD)  # a safe retry answers as the first time, even if expired
        refusal = refused(
            None if _points_ok(request.points) else INVALID,
            ID_CONFLICT if retry is False else None,
            INVALID if _expired_on_arrival(request, now) else None,
        )
        if refusal is not None:
            return refusal
        customer = self.customers.setdefault(customer_id, Customer())
        return Outcome(OK_ADD, written=self._write_lot(customer_id, customer, request, now))

    def redeem(self, customer_id: str, request: RedemptionRequest, now: datetime) -> Outcome:
        customer = self.customers.get(customer_id)
        retry = self._retry(customer_id, request.id, request.content(customer_id))
        if retry and _points_ok(request.points):
            return Outcome(OK_ADD)
        available = self.active_points(customer_id, now)
        refusal = refused(
            None if _points_ok(request.points) else INVALID,
            NOT_FOUND if customer is None else None,
            ID_CONFLICT if retry is False else None,
            Error(400, "insufficient", request.points, available)
            if customer is not None and request.points > available
            else None,
        )
        if refusal is not None:
            return refusal
        assert customer is not None
        redemption = Redemption(
            content=request.content(customer_id),
            id=request.id,
            description=request.description or DEFAULT_REDEEM_DESCRIPTION,
            points=request.points,
            all_points_after_creation=available - request.points,
            draws=[],
        )
        wanted = request.points
        for lot in customer.lots:  # oldest first: the list is in creation order
            if wanted == 0:
                break
            if lot.expired(now) or lot.remaining() == 0:
                continue
            self._draw(redemption, lot, min(wanted, lot.remaining()), now)
            wanted -= redemption.draws[-1][1]
        assert wanted == 0 and sum(take for _, take in redemption.draws) == request.points
        customer.redemptions.append(redemption)
        return Outcome(OK_ADD, written=redemption)

    def deduct(self, customer_id: str, request: DeductionRequest, now: datetime) -> Outcome:
        """Like a redemption, from the named lot first; refused beyond the balance."""
        customer = self.customers.get(customer_id)
        retry = self._retry(customer_id, request.id, request.content(customer_id))
        if retry and _points_ok(request.points):
            return Outcome(OK_ADD)
        available = self.active_points(customer_id, now)
        named = [lot for lot in customer.lots if lot.id == request.lot_id] if customer else []
        refusal = refused(
            None if _points_ok(request.points) else INVALID,
            NOT_FOUND if customer is None else None,
            ID_CONFLICT if retry is False else None,
            INVALID if customer is not None and request.lot_id is not None and not named else None,
            Error(400, "insufficient", request.points, available)
            if customer is not None and request.points > available
            else None,
        )
        if refusal is not None:
            return refusal
        assert customer is not None
        deduction = Redemption(
            content=request.content(customer_id),
            id=request.id,
            description=request.reason or DEFAULT_DEDUCT_DESCRIPTION,
            points=request.points,
            all_points_after_creation=available - request.points,
            draws=[],
            deducted=True,
        )
        wanted = request.points
        for lot in named + [lot for lot in customer.lots if lot not in named]:
            if wanted == 0:
                break
            if lot.expired(now) or lot.remaining() == 0:
                continue
            self._draw(deduction, lot, min(wanted, lot.remaining()), now)
            wanted -= deduction.draws[-1][1]
        assert wanted == 0
        customer.redemptions.append(deduction)
        answer = {"points": request.points, "balanceAfter": available - request.points}
        return Outcome(OK_ADD, written=deduction, answer=answer)

    def reverse(self, customer_id: str, request: ReversalRequest, now: datetime) -> Outcome:
        """Give a redemption's points back to its lots, the newest lot first; a lot expired
        by now takes its share back, and it does not count."""
        customer = self.customers.get(customer_id)
        existing = self.entry(customer_id, request.id) if request.id is not None else None
        content = request.content(customer_id)
        if isinstance(existing, Reversal) and existing.content == content:
            return Outcome(OK_ADD, answer=existing.answer)
        redemption = next(
            (
                r
                for r in (customer.redemptions if customer else [])
                if r.id == request.redemption_id and not r.deducted
            ),
            None,
        )
        left = redemption.points - redemption.reversed_points if redemption else 0
        points = request.points if request.points is not None else left
        refusal = refused(
            None if request.points is None or _points_ok(request.points) else INVALID,
            NOT_FOUND if customer is None else None,
            ID_CONFLICT if existing is not None else None,
            Error(404, "no_redemption") if customer is not None and redemption is None else None,
            INVALID if redemption is not None and not 1 <= points <= left else None,
        )
        if refusal is not None:
            return refusal
        assert customer is not None and redemption is not None
        restored = expired = 0
        wanted = points
        for index in sorted(
            range(len(redemption.draws)),
            key=lambda i: customer.lots.index(redemption.draws[i][0]),
            reverse=True,
        ):
            if wanted == 0:
                break
            lot, held = redemption.draws[index]
            share = min(wanted, held)
            wanted -= share
            redemption.draws[index] = (lot, held - share)
            lot.used_points -= share
            lot.changes.append((now, -share))
            if held == share:
                lot.used_with.remove(redemption)
            if lot.expired(now):
                expired += share
            else:
                restored += share
        redemption.draws = [(lot, held) for lot, held in redemption.draws if held]
        redemption.reversed_points += points
        answer = {"restoredPoints": restored, "expiredPoints": expired}
        reversal = Reversal(content, request.id, answer)
        customer.reversals.append(reversal)
        return Outcome(OK_ADD, answer=answer, reversal=reversal)

    def create(
        self,
        customer_id: str,
        start: LotRequest | None,
        now: datetime,
        body_customer_id: str | None = None,
    ) -> Outcome:
        # The new customer has no entries yet, so a start lot's id is always free.
        refusal = refused(
            INVALID if body_customer_id not in (None, customer_id) else None,
            INVALID if start is not None and not _points_ok(start.points) else None,
            INVALID if start is not None and _expired_on_arrival(start, now) else None,
            EXISTS if customer_id in self.customers else None,
        )
        if refusal is not None:
            return refusal
        customer = self.customers[customer_id] = Customer()
        if start is None:
            return Outcome(OK_CREATE)
        return Outcome(OK_CREATE, written=self._write_lot(customer_id, customer, start, now))

    def delete(self, customer_id: str) -> Outcome:
        if self.customers.pop(customer_id, None) is None:
            return Outcome(errors=(NOT_FOUND,))
        return Outcome(200)

    def bind(self, entry: Entry, entry_id: str, created_at: datetime) -> None:
        """Learn what the server chose for a written entry: its id (unless the client gave
        one) and its ``createdAt``, from which a default ``validUntil`` follows."""
        assert entry.id in (None, entry_id)
        entry.id = entry_id
        entry.created_at = created_at
        if isinstance(entry, Lot) and entry.valid_until is None:
            entry.valid_until = add_months(created_at, self.validity_months)

    # ---- helpers -----------------------------------------------------------------------

    def _retry(
        self, customer_id: str, entry_id: str | None, content: tuple[Any, ...]
    ) -> bool | None:
        """None: a new id. True: a safe retry. False: the id is taken by other content."""
        if entry_id is None:
            return None
        existing = self.entry(customer_id, entry_id)
        if existing is None:
            return None
        return existing.content == content

    @staticmethod
    def _draw(redemption: Redemption, lot: Lot, take: int, now: datetime) -> None:
        lot.used_points += take
        lot.used_with.append(redemption)
        lot.changes.append((now, take))
        redemption.draws.append((lot, take))

    def _write_lot(
        self, customer_id: str, customer: Customer, request: LotRequest, now: datetime
    ) -> Lot:
        lot = Lot(
            content=request.content(customer_id),
            id=request.id,
            reference_id=request.reference_id,
            description=request.description or DEFAULT_ADD_DESCRIPTION,
            points=request.points,
            valid_until=request.valid_until,
            all_points_after_creation=self.active_points(customer_id, now) + request.points,
            written_at=now,
        )
        customer.lots.append(lot)
        return lot


def _points_ok(points: int) -> bool:
    return 1 <= points <= MAX_POINTS


def _expired_on_arrival(request: LotRequest, now: datetime) -> bool:
    return request.valid_until is not None and request.valid_until <= now


def _lot_json(lot: Lot) -> dict[str, Any]:
    assert lot.created_at is not None and lot.valid_until is not None, "lot not bound"
    return {
        "id": lot.id,
        "reference-id": lot.reference_id,
        "description": lot.description,
        "points": lot.points,
        "createdAt": wire_time(lot.created_at),
        "allPointsAfterCreation": lot.all_points_after_creation,
        "usedPoints": lot.used_points,
        "validUntil": wire_time(lot.valid_until),
        "usedWith": [redemption.id for redemption in lot.used_with],
    }


def _redemption_json(redemption: Redemption) -> dict[str, Any]:
    assert redemption.created_at is not None, "redemption not bound"
    return {
        "id": redemption.id,
        "description": redemption.description,
        "points": redemption.points - redemption.reversed_points,
        "createdAt": wire_time(redemption.created_at),
        "allPointsAfterCreation": redemption.all_points_after_creation,
    }
