"""The ledger's commands: each one call of a database function (src/rewardpoints/sql/).

The functions are the rules of CONTRACT.md section 2, written once: each write locks the
customer's account row first, reads the clock under that lock, applies the whole command and
answers in one round trip. Every write commits before its command returns, so the caller
answers 2xx only for a committed write. This module chooses how a call is sent (straight to
the driver, several waiting calls in one statement, or inside a request's own transaction)
and turns the functions' answers into results and domain errors.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Row, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .config import Site
from .db import (
    active_transaction_hook,
    run_transaction,
    sqlstate,
)
from .direct import Coalesced, Direct, StatementError
from .errors import (
    CustomerExists,
    CustomerNotFound,
    EntryConflict,
    InsufficientPoints,
    InvalidRequest,
    OrderConflict,
    RedemptionNotFound,
    TooManyToReverse,
    UnknownSite,
)
from .metrics import POINTS

T = TypeVar("T")

DEFAULT_ADD_DESCRIPTION = "points added"
DEFAULT_REDEEM_DESCRIPTION = "points redeemed"
# Emporix's refund when a redeemed coupon could not be issued: its exact text and validity.
CHARGEBACK_DESCRIPTION = "Chargeback - redeemed voucher could not be created."
CHARGEBACK_VALIDITY_MONTHS = 36


@dataclass(frozen=True, slots=True)
class NewLot:
    points: int
    id: str | None = None
    reference_id: str | None = None
    description: str | None = None
    valid_until: datetime | None = None
    reason: str | None = None  # recorded in the journal; not the entry's content

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
    reason: str | None = None  # recorded in the journal; not the entry's content

    def fingerprint(self, customer_id: str) -> str:
        return _digest(["redemption", customer_id, self.points, self.description])


@dataclass(frozen=True, slots=True)
class NewReversal:
    redemption_id: str
    points: int | None = None  # None: all the redemption still holds
    id: str | None = None
    reason: str | None = None

    def fingerprint(self, customer_id: str) -> str:
        return _digest(["reversal", customer_id, self.redemption_id, self.points])


@dataclass(frozen=True, slots=True)
class NewDeduction:
    points: int
    id: str | None = None
    reference_id: str | None = None
    lot_id: str | None = None  # the lot to take from first
    reason: str | None = None

    def fingerprint(self, customer_id: str) -> str:
        return _digest(["deduction", customer_id, self.points, self.reference_id, self.lot_id])


@dataclass(frozen=True, slots=True)
class Reversal:
    id: str
    restored_points: int
    expired_points: int


@dataclass(frozen=True, slots=True)
class Deduction:
    id: str
    points: int
    balance_after: int


@dataclass(frozen=True, slots=True)
class Preview:
    """What a write would do now (a dry run): the balance before and after, and the lots it
    would draw from or give back to, each with its points (a new lot's id is None when the
    server would make it)."""

    balance_before: int
    balance_after: int
    lots: list[tuple[str | None, int]]


DEFAULT_DEDUCT_DESCRIPTION = "points deducted"


@dataclass(frozen=True, slots=True)
class AwardedOrder:
    order_id: str
    customer_id: str
    points: int
    lot_id: str | None
    created: bool  # False: the order had been awarded before, and nothing was added now


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


class Ledger:
    def __init__(
        self,
        engine: AsyncEngine,
        sites: dict[str, Site],
        *,
        lock_timeout_seconds: float = 5.0,
        write_statements: int = 2,
        direct_engine: AsyncEngine | None = None,
    ) -> None:
        self.engine = engine
        self.sites = sites
        # Balances, additions and redemptions go straight to the driver (direct.py), on
        # direct_engine's connections when there is one (the primary itself, beside a pooler);
        # those waiting at the same moment go together: the balances as one statement, the
        # redemptions, and the additions, each kind in one transaction (rewardpoints_*_many).
        self.direct = Direct(direct_engine or engine, lock_timeout_seconds)
        self.balances: Coalesced[tuple[str, str], int | None] = Coalesced(
            self._one_balance, self._many_balances
        )
        self.redemptions = self._coalesced_writes(_REDEEM_SQL, _REDEEM_MANY_SQL, write_statements)
        self.additions = self._coalesced_writes(_ADD_SQL, _ADD_MANY_SQL, write_statements)

    def site(self, site_code: str) -> Site:
        try:
            return self.sites[site_code]
        except KeyError:
            raise UnknownSite(site_code) from None

    # ---- reads -------------------------------------------------------------------------

    async def balance(self, tenant: str, customer_id: str) -> int:
        balance = await self.balances.submit((tenant, customer_id))
        if balance is None:
            raise CustomerNotFound(customer_id)
        return balance

    async def _one_balance(self, key: tuple[str, str]) -> int | None:
        row = await self.direct.fetchrow(_BALANCE_SQL, *key)
        return None if row is None else int(row[0])

    async def _many_balances(self, keys: list[tuple[str, str]]) -> list[int | None]:
        tenants = [tenant for tenant, _ in keys]
        customer_ids = [customer_id for _, customer_id in keys]
        rows = await self.direct.fetch(_BALANCES_SQL, tenants, customer_ids)
        return [None if row[0] is None else int(row[0]) for row in rows]

    # ---- writes ------------------------------------------------------------------------

    async def create_customer(
        self,
        tenant: str,
        customer_id: str,
        start: NewLot | None,
        site_code: str,
        *,
        actor: str | None = None,
    ) -> None:
        site = self.site(site_code)
        lot = _lot_arguments(start or NewLot(1), customer_id, site.validity_in_months, actor)

        def answer(row: Row[Any]) -> None:
            if row[0] == "exists":
                raise CustomerExists(customer_id)

        await self._call(
            _CREATE_CUSTOMER_CALL,
            {"tenant": tenant, "customer": customer_id, "start": start is not None, **lot},
            answer,
            refused=partial(_raise_refusal, entry_id=lot["id"]),
        )
        if start is not None:
            POINTS.labels("added").inc(start.points)

    async def delete_customer(self, tenant: str, customer_id: str) -> None:
        def answer(row: Row[Any]) -> None:
            if not row[0]:
                raise CustomerNotFound(customer_id)

        await self._call(_DELETE_CUSTOMER_CALL, {"tenant": tenant, "customer": customer_id}, answer)

    async def add_points(
        self,
        tenant: str,
        customer_id: str,
        lot: NewLot,
        site_code: str,
        *,
        actor: str | None = None,
    ) -> str:
        """Credit a lot, creating the customer's entry when missing. Returns the lot's id."""
        site = self.site(site_code)
        params = {
            "tenant": tenant,
            "customer": customer_id,
            **_lot_arguments(lot, customer_id, site.validity_in_months, actor),
        }
        return await self._add(params)

    async def charge_back(
        self,
        conn: AsyncConnection,
        tenant: str,
        customer_id: str,
        points: int,
        *,
        actor: str | None = None,
    ) -> str:
        """Give back points whose coupon could not be issued (rewardpoints_charge_back), in the
        caller's transaction. CustomerNotFound when the customer was deleted since: the points
        went with it."""
        lot = NewLot(points, description=CHARGEBACK_DESCRIPTION)
        lot_id = str(uuid.uuid4())
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": lot_id,
            "description": CHARGEBACK_DESCRIPTION,
            "points": points,
            "months": CHARGEBACK_VALIDITY_MONTHS,
            "hash": lot.fingerprint(customer_id),
            "actor": actor,
        }
        if (await conn.execute(_CHARGE_BACK_CALL, params)).scalar_one() == "not_found":
            raise CustomerNotFound(customer_id)
        return lot_id  # counted by the caller once its transaction commits

    async def lock_redemption(
        self, conn: AsyncConnection, tenant: str, customer_id: str, redemption_id: str
    ) -> bool:
        """Hold the customer's account row for the caller's transaction if the redemption is
        still among the customer's entries (rewardpoints_lock_account); False when it is not:
        the customer was deleted since, and may have an entry again."""
        params = {"tenant": tenant, "customer": customer_id}
        if not (await conn.execute(_LOCK_ACCOUNT_CALL, params)).scalar_one():
            return False
        # Under the account's lock, which a delete holds too: read after it, not before.
        found = await conn.execute(_REDEMPTION_KEPT, {**params, "id": redemption_id})
        return bool(found.scalar_one())

    async def redeem_points(
        self,
        tenant: str,
        customer_id: str,
        redemption: NewRedemption,
        *,
        actor: str | None = None,
    ) -> str:
        """Spend active lots oldest first. Returns the redemption's id."""
        params, answer = self._redemption(tenant, customer_id, redemption, actor)
        if active_transaction_hook() is None:
            redeemed = answer(await self.redemptions.submit(tuple(params.values())))
        else:
            redeemed = await self._call(_REDEEM_CALL, params, answer)
        if redeemed.new:
            POINTS.labels("redeemed").inc(redemption.points)
        return redeemed.id

    async def redeem_points_in(
        self,
        conn: AsyncConnection,
        tenant: str,
        customer_id: str,
        redemption: NewRedemption,
        *,
        actor: str | None = None,
    ) -> str:
        """``redeem_points`` in the caller's transaction."""
        params, answer = self._redemption(tenant, customer_id, redemption, actor)
        return answer((await conn.execute(_REDEEM_CALL, params)).one()).id

    def _redemption(
        self, tenant: str, customer_id: str, redemption: NewRedemption, actor: str | None
    ) -> tuple[dict[str, Any], Callable[[Any], Written]]:
        """A redemption's arguments to rewardpoints_redeem, and its answer as the ledger's."""
        redemption_id = redemption.id or str(uuid.uuid4())
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": redemption_id,
            "client_id": redemption.id is not None,
            "description": redemption.description or DEFAULT_REDEEM_DESCRIPTION,
            "points": redemption.points,
            "hash": redemption.fingerprint(customer_id),
            "reason": redemption.reason,
            "actor": actor,
        }

        def answer(row: Any) -> Written:
            outcome, available = row
            if outcome == "not_found":
                raise CustomerNotFound(customer_id)
            if outcome == "conflict":
                raise EntryConflict(redemption_id)
            if outcome == "insufficient":
                raise InsufficientPoints(redemption.points, int(available))
            return Written(redemption_id, outcome == "redeemed")

        return params, answer

    async def award_order(
        self,
        tenant: str,
        customer_id: str,
        order_id: str,
        points: int,
        description: str,
        site_code: str,
        *,
        actor: str | None = None,
    ) -> AwardedOrder:
        """Credit an order's points exactly once (rewardpoints_award_order)."""
        site = self.site(site_code)
        lot = NewLot(points, reference_id=order_id, description=description)
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "order": order_id,
            "points": points,
            "lot_id": str(uuid.uuid4()),
            "description": description,
            "months": site.validity_in_months,
            "hash": lot.fingerprint(customer_id),
            "reason": None,
            "actor": actor,
        }

        def answer(row: Any) -> AwardedOrder:
            outcome, awarded, lot_id = row
            return AwardedOrder(order_id, customer_id, int(awarded), lot_id, outcome == "awarded")

        def refused(state: str | None) -> None:
            if state == "RPORD":
                raise OrderConflict(order_id) from None

        order = await self._call(_AWARD_ORDER_CALL, params, answer, refused=refused)
        if order.created:
            POINTS.labels("added").inc(order.points)
        return order

    async def reverse_points(
        self,
        tenant: str,
        customer_id: str,
        reversal: NewReversal,
        *,
        actor: str | None = None,
        dry_run: bool = False,
    ) -> Reversal | Preview:
        """Give (part of) a redemption's points back to its lots (rewardpoints_reverse); with
        ``dry_run``, what that would do now, written nowhere."""
        reversal_id = reversal.id or str(uuid.uuid4())
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": reversal_id,
            "client_id": reversal.id is not None,
            "redemption": reversal.redemption_id,
            "points": reversal.points,
            "reason": reversal.reason,
            "actor": actor,
            "hash": reversal.fingerprint(customer_id),
            "dry": dry_run,
        }

        def answer(rows: Sequence[Any]) -> Reversal | Preview:
            first = rows[0]
            outcome = first[0]
            if outcome == "not_found":
                raise CustomerNotFound(customer_id)
            if outcome == "conflict":
                raise EntryConflict(reversal_id)
            if outcome == "unknown_redemption":
                raise RedemptionNotFound(customer_id, reversal.redemption_id)
            if outcome == "too_many":
                raise TooManyToReverse(reversal.redemption_id, reversal.points, int(first[1]))
            if dry_run:
                return _preview(first[4], first[5], [(row[6], row[7]) for row in rows])
            return Reversal(reversal_id, int(first[2]), int(first[3]))

        result = await self._command(_REVERSE_CALL, params, answer, dry_run=dry_run)
        if isinstance(result, Reversal) and not dry_run:
            POINTS.labels("reversed").inc(result.restored_points + result.expired_points)
        return result

    async def deduct_points(
        self,
        tenant: str,
        customer_id: str,
        deduction: NewDeduction,
        site_code: str,
        *,
        actor: str | None = None,
        dry_run: bool = False,
    ) -> Deduction | Preview:
        """Take points back (rewardpoints_deduct): from the named lot first, then oldest first;
        beyond the balance only where the site allows a negative balance. With ``dry_run``,
        what that would do now, written nowhere."""
        site = self.site(site_code)
        deduction_id = deduction.id or str(uuid.uuid4())
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": deduction_id,
            "client_id": deduction.id is not None,
            "reference": deduction.reference_id,
            "description": deduction.reason or DEFAULT_DEDUCT_DESCRIPTION,
            "points": deduction.points,
            "lot": deduction.lot_id,
            "allow_debt": site.negative_balance,
            "reason": deduction.reason,
            "actor": actor,
            "hash": deduction.fingerprint(customer_id),
            "dry": dry_run,
        }

        def answer(rows: Sequence[Any]) -> Deduction | Preview:
            first = rows[0]
            outcome = first[0]
            if outcome == "not_found":
                raise CustomerNotFound(customer_id)
            if outcome == "conflict":
                raise EntryConflict(deduction_id)
            if outcome == "unknown_lot":
                raise InvalidRequest(
                    f"lotId '{deduction.lot_id}' names no lot of customer {customer_id}",
                    field="lotId",
                )
            if outcome == "insufficient":
                raise InsufficientPoints(deduction.points, int(first[1]))
            if dry_run:
                return _preview(first[1], first[2], [(row[3], row[4]) for row in rows])
            if outcome == "retry":
                return Deduction(deduction_id, int(first[1]), int(first[2]))
            return Deduction(deduction_id, deduction.points, int(first[2]))

        result = await self._command(_DEDUCT_CALL, params, answer, dry_run=dry_run)
        if isinstance(result, Deduction) and not dry_run:
            POINTS.labels("deducted").inc(deduction.points)
        return result

    async def preview_add(
        self, tenant: str, customer_id: str, lot: NewLot, site_code: str
    ) -> Preview:
        """What addPoints would do now (rewardpoints_preview_add), written nowhere."""
        site = self.site(site_code)
        arguments = _lot_arguments(lot, customer_id, site.validity_in_months, None)
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": lot.id,
            "client_id": lot.id is not None,
            "points": lot.points,
            "valid_until": lot.valid_until,
            "months": site.validity_in_months,
            "hash": arguments["hash"],
        }

        def answer(rows: Sequence[Any]) -> Preview:
            first = rows[0]
            _raise_refusal(first[0], lot.id or "")
            return _preview(first[1], first[2], [(row[3], row[4]) for row in rows])

        return await self._command(_PREVIEW_ADD_CALL, params, answer, dry_run=True)

    async def preview_redeem(
        self, tenant: str, customer_id: str, redemption: NewRedemption
    ) -> Preview:
        """What redeemPoints would do now (rewardpoints_preview_redeem), written nowhere."""
        params = {
            "tenant": tenant,
            "customer": customer_id,
            "id": redemption.id,
            "client_id": redemption.id is not None,
            "points": redemption.points,
            "hash": redemption.fingerprint(customer_id),
        }

        def answer(rows: Sequence[Any]) -> Preview:
            first = rows[0]
            if first[0] == "not_found":
                raise CustomerNotFound(customer_id)
            if first[0] == "conflict":
                raise EntryConflict(redemption.id or "")
            if first[0] == "insufficient":
                raise InsufficientPoints(redemption.points, int(first[1]))
            return _preview(first[1], first[2], [(row[3], row[4]) for row in rows])

        return await self._command(_PREVIEW_REDEEM_CALL, params, answer, dry_run=True)

    # ---- how calls are sent ------------------------------------------------------------

    async def _command(
        self,
        statement: Any,
        params: dict[str, Any],
        answer: Callable[[Sequence[Any]], T],
        *,
        dry_run: bool,
    ) -> T:
        """A function call that answers several rows: a write in a transaction of its own (or
        the request's), or a dry run in a read-only one, which can write nothing."""

        async def body(conn: AsyncConnection) -> T:
            if dry_run:
                await conn.execute(text("SET TRANSACTION READ ONLY"))
            return answer((await conn.execute(statement, params)).all())

        if dry_run:
            return await run_transaction(self.engine, body, write=False)
        return await run_transaction(
            self.engine, body, retry_on_integrity=True, single_statement=True
        )

    async def _add(self, params: dict[str, Any]) -> str:
        entry_id = params["id"]

        def answer(row: Any) -> Written:
            _raise_refusal(row[0], entry_id)  # as rewardpoints_add_many answers them
            return Written(str(row[1]), row[0] == "added")

        if active_transaction_hook() is None:
            try:
                added = answer(await self.additions.submit(tuple(params.values())))
            except StatementError as error:  # raised by rewardpoints_add alone
                _raise_refusal(error.sqlstate, entry_id)
                raise
        else:
            added = await self._call(
                _ADD_CALL, params, answer, refused=partial(_raise_refusal, entry_id=entry_id)
            )
        if added.new:
            POINTS.labels("added").inc(params["points"])
        return added.id

    async def _call(
        self,
        statement: Any,
        params: dict[str, Any],
        answer: Callable[[Row[Any]], T],
        *,
        refused: Callable[[str | None], None] | None = None,
    ) -> T:
        """One function call in a transaction of its own, or in the request's (with a
        transaction hook: idempotency.py). ``answer`` turns its row into the command's result
        or error inside the transaction; ``refused`` turns a refusal the function raised (its
        SQLSTATE) into the ledger's error."""

        async def body(conn: AsyncConnection) -> T:
            try:
                row = (await conn.execute(statement, params)).one()
            except DBAPIError as error:
                if refused is not None:
                    refused(sqlstate(error))
                raise
            return answer(row)

        return await run_transaction(
            self.engine, body, retry_on_integrity=True, single_statement=True
        )

    def _coalesced_writes(
        self, one_sql: str, many_sql: str, statements: int
    ) -> Coalesced[tuple[Any, ...], tuple[Any, Any]]:
        """Writes of one kind waiting at the same moment, applied in one transaction (a
        ``*_many`` function: each write applied by the one-write rule, in arrival order); a
        write alone, or one of a transaction the database refused, by the one-write function.
        Each gives the function's (outcome, value)."""
        direct = self.direct

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
        # alone; so are all of a statement that the database refused (a text it cannot
        # store), each with its own answer.
        return Coalesced(
            one,
            many,
            max_in_flight=statements,
            one_by_one_on=(StatementError,),
            again_alone=lambda result: result[0] == "busy",
        )


@dataclass(frozen=True, slots=True)
class Written:
    """An entry's id, and whether this call wrote it (not a retry of one written before)."""

    id: str
    new: bool


def _lot_arguments(
    lot: NewLot, customer_id: str, validity_months: int, actor: str | None
) -> dict[str, Any]:
    """A lot's arguments to rewardpoints_add and the functions like it, in their parameters'
    order after the tenant and customer."""
    return {
        "id": lot.id or str(uuid.uuid4()),
        "client_id": lot.id is not None,
        "reference": lot.reference_id,
        "description": lot.description or DEFAULT_ADD_DESCRIPTION,
        "points": lot.points,
        "valid_until": lot.valid_until,
        "months": validity_months,
        "hash": lot.fingerprint(customer_id),
        "reason": lot.reason,
        "actor": actor,
    }


def _preview(before: Any, after: Any, lots: list[tuple[Any, Any]]) -> Preview:
    """A preview function's rows as a Preview; a retry's rows name no lot."""
    drawn = [(lot_id, int(points)) for lot_id, points in lots if points is not None]
    return Preview(int(before), int(after), drawn)


def _raise_refusal(outcome: str | None, entry_id: str) -> None:
    """A lot the functions refused (rewardpoints_add_lot's answer, or the SQLSTATE
    rewardpoints_raise_refusal raised) as the ledger's error."""
    if outcome in ("conflict", "RP409"):
        raise EntryConflict(entry_id) from None
    if outcome in ("invalid", "RP400"):
        raise InvalidRequest("validUntil must be in the future", field="validUntil") from None


_LOT_PARAMETERS = (
    ":id, :client_id, :reference, :description, :points, :valid_until, :months, :hash, :reason,"
    " :actor"
)
_ADD_CALL = text(
    f"SELECT outcome, entry_id FROM rewardpoints_add(:tenant, :customer, {_LOT_PARAMETERS})"  # noqa: S608
)
_REDEEM_CALL = text(
    "SELECT outcome, available FROM rewardpoints_redeem(:tenant, :customer, :id, :client_id, "
    ":description, :points, :hash, :reason, :actor)"
)
_CREATE_CUSTOMER_CALL = text(
    f"SELECT rewardpoints_create_customer(:tenant, :customer, :start, {_LOT_PARAMETERS})"
)
_CHARGE_BACK_CALL = text(
    "SELECT rewardpoints_charge_back(:tenant, :customer, :id, :description, :points, :months,"
    " :hash, :actor)"
)
_LOCK_ACCOUNT_CALL = text("SELECT rewardpoints_lock_account(:tenant, :customer, false)")
_REDEMPTION_KEPT = text(
    "SELECT EXISTS (SELECT 1 FROM redemptions"
    " WHERE tenant = :tenant AND customer_id = :customer AND id = :id)"
)
_DELETE_CUSTOMER_CALL = text("SELECT rewardpoints_delete_customer(:tenant, :customer)")
_REVERSE_CALL = text(
    "SELECT * FROM rewardpoints_reverse(:tenant, :customer, :id, :client_id, :redemption,"
    " :points, :reason, :actor, :hash, :dry)"
)
_DEDUCT_CALL = text(
    "SELECT * FROM rewardpoints_deduct(:tenant, :customer, :id, :client_id, :reference,"
    " :description, :points, :lot, :allow_debt, :reason, :actor, :hash, :dry)"
)
_PREVIEW_ADD_CALL = text(
    "SELECT * FROM rewardpoints_preview_add(:tenant, :customer, :id, :client_id, :points,"
    " :valid_until, :months, :hash)"
)
_PREVIEW_REDEEM_CALL = text(
    "SELECT * FROM rewardpoints_preview_redeem(:tenant, :customer, :id, :client_id, :points, :hash)"
)
_AWARD_ORDER_CALL = text(
    "SELECT outcome, awarded_points, awarded_lot FROM rewardpoints_award_order(:tenant,"
    " :customer, :order, :points, :lot_id, :description, :months, :hash, :reason, :actor)"
)

# The same calls in asyncpg's numbered parameters, in the order of the params dicts above
# (direct.py).
_ADD_SQL = (
    "SELECT outcome, entry_id FROM rewardpoints_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
    " $12)"
)
_REDEEM_SQL = (
    "SELECT outcome, available FROM rewardpoints_redeem($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_REDEEM_MANY_SQL = (
    "SELECT outcome, available FROM rewardpoints_redeem_many($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_ADD_MANY_SQL = (
    "SELECT outcome, entry_id FROM rewardpoints_add_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
    " $11, $12)"
)
# A customer's balance now (rewardpoints_available: the points its last write stored while no
# lot has expired since), no row without an account; PostgreSQL inlines the function here.
_BALANCE_SQL = (
    "SELECT b.available FROM (SELECT rewardpoints_read_now() AS now) c,"
    " rewardpoints_available($1, $2, c.now) b"
)
# The same for many customers at once ($1 tenants, $2 customer ids), one row per pair in their
# order, NULL for a customer without an entry; each pair is one probe of the accounts' key.
_BALANCES_SQL = (
    "SELECT b.available"
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(tenant, customer_id, n)"
    " CROSS JOIN (SELECT rewardpoints_read_now() AS now) c"
    " LEFT JOIN LATERAL rewardpoints_available(k.tenant, k.customer_id, c.now) b ON true"
    " ORDER BY k.n"
)
