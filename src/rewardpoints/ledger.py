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
from .db import active_transaction_hook, run_transaction, sqlstate
from .direct import Coalesced, Direct, StatementError
from .errors import (
    CustomerExists,
    CustomerNotFound,
    EntryConflict,
    InsufficientPoints,
    InvalidRequest,
    OrderConflict,
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

    def fingerprint(self, customer_id: str) -> str:
        return _digest(["redemption", customer_id, self.points, self.description])


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
    ) -> None:
        self.engine = engine
        self.sites = sites
        # Balances, additions and redemptions go straight to the driver (direct.py); those
        # waiting at the same moment go together: the balances as one statement, the
        # redemptions, and the additions, each kind in one transaction (rewardpoints_*_many).
        self.direct = Direct(engine, lock_timeout_seconds)
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
        self, tenant: str, customer_id: str, start: NewLot | None, site_code: str
    ) -> None:
        site = self.site(site_code)
        lot = _lot_arguments(start or NewLot(1), customer_id, site.validity_in_months)

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

    async def add_points(self, tenant: str, customer_id: str, lot: NewLot, site_code: str) -> str:
        """Credit a lot, creating the customer's entry when missing. Returns the lot's id."""
        site = self.site(site_code)
        params = {
            "tenant": tenant,
            "customer": customer_id,
            **_lot_arguments(lot, customer_id, site.validity_in_months),
        }
        return await self._add(params)

    async def charge_back(
        self, conn: AsyncConnection, tenant: str, customer_id: str, points: int
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

    async def redeem_points(self, tenant: str, customer_id: str, redemption: NewRedemption) -> str:
        """Spend active lots oldest first. Returns the redemption's id."""
        params, answer = self._redemption(tenant, customer_id, redemption)
        if active_transaction_hook() is None:
            redeemed = answer(await self.redemptions.submit(tuple(params.values())))
        else:
            redeemed = await self._call(_REDEEM_CALL, params, answer)
        if redeemed.new:
            POINTS.labels("redeemed").inc(redemption.points)
        return redeemed.id

    async def redeem_points_in(
        self, conn: AsyncConnection, tenant: str, customer_id: str, redemption: NewRedemption
    ) -> str:
        """``redeem_points`` in the caller's transaction."""
        params, answer = self._redemption(tenant, customer_id, redemption)
        return answer((await conn.execute(_REDEEM_CALL, params)).one()).id

    def _redemption(
        self, tenant: str, customer_id: str, redemption: NewRedemption
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

    # ---- how calls are sent ------------------------------------------------------------

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


def _lot_arguments(lot: NewLot, customer_id: str, validity_months: int) -> dict[str, Any]:
    """A lot's arguments to rewardpoints_add_lot and the functions that call it, in its
    parameters' order after the tenant and customer."""
    return {
        "id": lot.id or str(uuid.uuid4()),
        "client_id": lot.id is not None,
        "reference": lot.reference_id,
        "description": lot.description or DEFAULT_ADD_DESCRIPTION,
        "points": lot.points,
        "valid_until": lot.valid_until,
        "months": validity_months,
        "hash": lot.fingerprint(customer_id),
    }


def _raise_refusal(outcome: str | None, entry_id: str) -> None:
    """A lot the functions refused (rewardpoints_add_lot's answer, or the SQLSTATE
    rewardpoints_raise_refusal raised) as the ledger's error."""
    if outcome in ("conflict", "RP409"):
        raise EntryConflict(entry_id) from None
    if outcome in ("invalid", "RP400"):
        raise InvalidRequest("validUntil must be in the future", field="validUntil") from None


_LOT_PARAMETERS = ":id, :client_id, :reference, :description, :points, :valid_until, :months, :hash"
_ADD_CALL = text(
    f"SELECT outcome, entry_id FROM rewardpoints_add(:tenant, :customer, {_LOT_PARAMETERS})"  # noqa: S608
)
_REDEEM_CALL = text(
    "SELECT outcome, available FROM rewardpoints_redeem(:tenant, :customer, :id, :client_id, "
    ":description, :points, :hash)"
)
_CREATE_CUSTOMER_CALL = text(
    f"SELECT rewardpoints_create_customer(:tenant, :customer, :start, {_LOT_PARAMETERS})"
)
_CHARGE_BACK_CALL = text(
    "SELECT rewardpoints_charge_back(:tenant, :customer, :id, :description, :points, :months,"
    " :hash)"
)
_LOCK_ACCOUNT_CALL = text("SELECT rewardpoints_lock_account(:tenant, :customer, false)")
_REDEMPTION_KEPT = text(
    "SELECT EXISTS (SELECT 1 FROM redemptions"
    " WHERE tenant = :tenant AND customer_id = :customer AND id = :id)"
)
_DELETE_CUSTOMER_CALL = text("SELECT rewardpoints_delete_customer(:tenant, :customer)")
_AWARD_ORDER_CALL = text(
    "SELECT outcome, awarded_points, awarded_lot FROM rewardpoints_award_order(:tenant,"
    " :customer, :order, :points, :lot_id, :description, :months, :hash)"
)

# The same calls in asyncpg's numbered parameters, in the order of the params dicts above
# (direct.py).
_ADD_SQL = "SELECT outcome, entry_id FROM rewardpoints_add($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_REDEEM_SQL = "SELECT outcome, available FROM rewardpoints_redeem($1, $2, $3, $4, $5, $6, $7)"
_REDEEM_MANY_SQL = (
    "SELECT outcome, available FROM rewardpoints_redeem_many($1, $2, $3, $4, $5, $6, $7)"
)
_ADD_MANY_SQL = (
    "SELECT outcome, entry_id FROM rewardpoints_add_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
# The balance of account ``a``: the active points its last write stored, while no lot they
# count has expired (rewardpoints_add_lot, rewardpoints_redeem); else the sum of its open lots.
_ACCOUNT_BALANCE = (
    "CASE WHEN a.active_since <= c.now AND c.now < a.active_until THEN a.active_points"
    " ELSE COALESCE((SELECT SUM(l.points - l.used_points) FROM lots l"
    " WHERE l.tenant = a.tenant AND l.customer_id = a.customer_id AND NOT l.used_up"
    " AND l.valid_until > c.now), 0) END::bigint"
)
_BALANCE_SQL = (
    f"SELECT {_ACCOUNT_BALANCE}"  # noqa: S608 - fixed text
    " FROM accounts a, (SELECT rewardpoints_read_now() AS now) c"
    " WHERE a.tenant = $1 AND a.customer_id = $2"
)
# The same for many customers at once ($1 tenants, $2 customer ids), one row per pair in their
# order, NULL for a customer without an entry; each pair is one probe of the accounts' key.
_BALANCES_SQL = (
    f"SELECT (SELECT {_ACCOUNT_BALANCE}"  # noqa: S608 - fixed text
    " FROM accounts a WHERE a.tenant = k.tenant AND a.customer_id = k.customer_id)"
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(tenant, customer_id, n),"
    " (SELECT rewardpoints_read_now() AS now) c"
    " ORDER BY k.n"
)
