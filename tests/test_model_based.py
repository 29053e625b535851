"""Model-based test of the ledger: hypothesis drives the real API (the ASGI app on the real,
migrated databases) with random sequences of adds, redemptions, deductions, reversals, retries,
entry creation and deletion, reads and clock jumps, and a customer with a long history whose
lots expire between its writes, for two tenants sharing customer ids, and compares every
answer with the pure-Python model in ``ledger_model.py``. After every step the
touched customers' summaries, in both tenants, must equal the model's and obey the ledger's
rules; the balance at past instants must be the model's too.

Profiles, chosen by ``REWARDPOINTS_HYPOTHESIS_PROFILE``: ``ci`` (the default, about 100
examples x 30 steps, under a minute per database) and ``deep`` (2000 x 60, on demand):
``REWARDPOINTS_HYPOTHESIS_PROFILE=deep pytest tests/test_model_based.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rewardpoints.app import create_app

from .conftest import bearer, make_settings, token
from .ledger_model import (
    MAX_POINTS,
    DeductionRequest,
    Entry,
    Error,
    Lot,
    LotRequest,
    Outcome,
    RedemptionRequest,
    ReversalRequest,
    TenantLedger,
)
from .support import FakeClock

T = TypeVar("T")

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=2000,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get("REWARDPOINTS_HYPOTHESIS_PROFILE", "ci"))

BASE = "/reward-points"
# Shared by both tenants. Byte order differs from numeric order ("10" < "9"), and one is not ASCII.
CUSTOMERS = ("10", "9", "kunde-ü")
# Client ids that come back again and again, so retries and conflicts happen; one at the limit.
POOLED_IDS = ("a", "order-17", "Ü-1", "L" * 255)
# Where the clock may be put relative to a lot's validUntil: on it, and a millisecond before.
BOUNDARY_OFFSETS = (timedelta(0), -timedelta(milliseconds=1))
IGNORED_FIELDS = {
    "add": ("createdAt", "allPointsAfterCreation", "usedPoints", "usedWith"),
    "redeem": ("createdAt", "allPointsAfterCreation"),
}
OFFSETS = {
    "Z": UTC,
    "+00:00": UTC,
    "+05:30": timezone(timedelta(hours=5, minutes=30)),
    "-08:00": timezone(timedelta(hours=-8)),
}


# ---- what the rules draw ---------------------------------------------------------------------


@dataclass(frozen=True)
class ValidUntil:
    """A ``validUntil`` relative to the clock when sent: hours and minutes ahead (plus 30 min
    17 s, away from any whole-hour jump of the clock), or ``hours`` back when ``past``."""

    hours: int
    past: bool
    form: str  # a key of OFFSETS, or "naive" (no offset: read as UTC)
    minutes: int = 0

    def moment(self, now: datetime) -> datetime:
        if self.past:
            return now - timedelta(hours=self.hours, seconds=17)
        return now + timedelta(hours=self.hours, minutes=30 + self.minutes, seconds=17)

    def text(self, moment: datetime) -> str:
        if self.form == "naive":
            return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
        written = moment.astimezone(OFFSETS[self.form]).isoformat(timespec="milliseconds")
        return written.replace("+00:00", "Z") if self.form == "Z" else written


@dataclass(frozen=True)
class Add:
    customer: str
    points: int
    id: str | None
    reference_id: str | None
    description: str | None
    valid_until: ValidUntil | None
    computed: tuple[tuple[str, Any], ...]  # server-computed fields: accepted and ignored


@dataclass(frozen=True)
class Redeem:
    customer: str
    amount: str  # within, exact or beyond the active points; or fixed
    n: int
    id: str | None
    description: str | None
    computed: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Deduct:
    customer: str
    amount: str  # as Redeem's
    n: int
    id: str | None
    lot: int | None  # which of the customer's lots to take from first; -1: an unknown one
    reason: str | None


@dataclass(frozen=True)
class Reverse:
    customer: str
    pick: int  # which of the customer's redemptions; -1: an unknown one
    points: str  # all (none given), one, some, too_many
    n: int
    id: str | None
    reason: str | None


@dataclass(frozen=True)
class Create:
    customer: str
    body: str  # none, empty, same (customerId = path), other (customerId != path), start
    start: Add | None


@dataclass(frozen=True)
class Delete:
    customer: str


Write = Add | Redeem | Deduct | Reverse | Create | Delete
ACTIONS = {
    "add": "/addPoints",
    "redeem": "/redeemPoints",
    "deduct": "/deductPoints",
    "reverse": "/reversePoints",
}


@dataclass(frozen=True)
class Sent:
    """A write exactly as it went over the wire, kept so that it can be sent again."""

    who: int
    kind: str
    customer: str
    body: Any
    lot: LotRequest | None = None
    redemption: RedemptionRequest | None = None
    body_customer: str | None = None
    deduction: DeductionRequest | None = None
    reversal: ReversalRequest | None = None

    def __repr__(self) -> str:
        return f"Sent({self.kind} tenant {self.who} customer {self.customer!r}: {self.body!r})"


text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
entry_ids = st.one_of(st.none(), st.sampled_from(POOLED_IDS), text)
customers = st.sampled_from(CUSTOMERS)
valid_untils = st.builds(
    ValidUntil,
    hours=st.integers(0, 72) | st.integers(0, 24 * 800),
    past=st.integers(0, 3).map(lambda n: n == 0),  # now and then, a date already gone
    form=st.sampled_from([*OFFSETS, "naive"]),
)
computed_fields = st.lists(
    st.sampled_from(["createdAt", "allPointsAfterCreation", "usedPoints", "usedWith"]),
    unique=True,
).map(
    lambda names: tuple(
        (
            name,
            {
                "createdAt": "2001-02-03T04:05:06.789Z",
                "allPointsAfterCreation": 999_999,
                "usedPoints": 7,
                "usedWith": ["a", "order-17"],
            }[name],
        )
        for name in names
    )
)
adds = st.builds(
    Add,
    customer=customers,
    points=st.one_of(st.integers(1, 100), st.integers(1, 100), st.integers(1, MAX_POINTS)),
    id=entry_ids,
    reference_id=st.none() | text,
    description=st.none() | text,
    valid_until=st.one_of(st.none(), st.none(), valid_untils),
    computed=computed_fields,
)
redeems = st.builds(
    Redeem,
    customer=customers,
    amount=st.sampled_from(["within", "within", "within", "exact", "beyond", "fixed"]),
    n=st.integers(0, 100) | st.integers(0, MAX_POINTS),  # a percentage when within
    id=entry_ids,
    description=st.none() | text,
    computed=computed_fields.map(
        lambda fields: tuple(f for f in fields if f[0] in ("createdAt", "allPointsAfterCreation"))
    ),
)
deducts = st.builds(
    Deduct,
    customer=customers,
    amount=st.sampled_from(["within", "within", "exact", "beyond", "fixed"]),
    n=st.integers(0, 100),
    id=entry_ids,
    lot=st.none() | st.integers(-1, 20),
    reason=st.none() | text,
)
reverses = st.builds(
    Reverse,
    customer=customers,
    pick=st.integers(-1, 20),
    points=st.sampled_from(["all", "one", "some", "too_many"]),
    n=st.integers(0, 100),
    id=entry_ids,
    reason=st.none() | text,
)
creates = st.builds(
    Create,
    customer=customers,
    body=st.sampled_from(["none", "empty", "same", "other", "start"]),
    start=adds,
)
deletes = st.builds(Delete, customer=customers)
writes = st.one_of(
    adds, adds, adds, redeems, redeems, redeems, deducts, reverses, reverses, creates, deletes
)


# ---- the machine -----------------------------------------------------------------------------


def customer_path(customer_id: str, action: str = "") -> str:
    return f"{BASE}/customer/{quote(customer_id, safe='')}{action}"


def not_found_body(customer_id: str) -> dict[str, Any]:
    return {
        "type": "resource_not_found",
        "status": 404,
        "message": f"No reward points found for customer {customer_id}",
    }


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed.astimezone(UTC)


class LedgerMachine(RuleBasedStateMachine):
    database_url: str = ""  # set by the test function, per database

    written = Bundle("written")

    def __init__(self) -> None:
        super().__init__()
        self.long_histories = 0
        self.loop = asyncio.new_event_loop()
        # The database reads exactly this clock (no step per reading), so the model and the
        # service measure expiry at the same moment, validUntil itself included; each step's
        # writes are a millisecond after the last step's (perform).
        self.clock = FakeClock(step=timedelta(0))
        self.http: httpx.AsyncClient | None = None
        self.app: Any = None
        # Fresh tenants for each example: examples never see each other's data.
        self.tenants = ["m" + secrets.token_hex(6), "n" + secrets.token_hex(6)]
        self.headers = [bearer(token(tenant)) for tenant in self.tenants]
        self.models: list[TenantLedger] = []
        self.touched: set[str] = set()
        self.pending: list[tuple[int, str, Entry, datetime, datetime]] = []
        # The clock of every step that wrote: the entries of a step are made within a
        # millisecond of it, and the next step comes later.
        self.step_times: list[datetime] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def run_all(self, coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
        """Run the coroutines concurrently on the machine's own loop."""

        async def together() -> list[T]:
            return list(await asyncio.gather(*coroutines))

        return self.run(together())

    @initialize(
        # hypothesis takes naive bounds; the drawn moment is read as UTC below
        start=st.datetimes(
            min_value=datetime(2001, 1, 1),  # noqa: DTZ001
            max_value=datetime(2090, 12, 31),  # noqa: DTZ001
        ),
        validity_months=st.sampled_from([36, 1, 12]),
        # Every summary streamed and read through segments of two entries (documents.py), or
        # summaries built whole from the entries.
        segmented=st.booleans(),
    )
    def build_app(self, start: datetime, validity_months: int, segmented: bool) -> None:
        self.clock.now = start.replace(microsecond=start.microsecond // 1000 * 1000, tzinfo=UTC)
        self.models = [TenantLedger(validity_months), TenantLedger(validity_months)]
        summaries = {"summary_stream_entries": 0, "summary_segment_entries": 2} if segmented else {}
        settings = make_settings(self.database_url, validity_months=validity_months, **summaries)
        self.app = create_app(settings, clock=self.clock)

        async def open_client() -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=self.app)
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        self.http = self.run(open_client())

    def teardown(self) -> None:
        async def close() -> None:
            if self.http is not None:
                await self.http.aclose()
            if self.app is not None:
                await self.app.state.ledger.engine.dispose()

        try:
            self.run(close())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    # ---- writes --------------------------------------------------------------------------
    # Each returns the adds and redemptions written under a client-given id, to be sent again.

    @rule(target=written, who=st.sampled_from([0, 1]), op=adds)
    def add_points(self, who: int, op: Add) -> Any:
        return self.perform((who, op))

    @rule(target=written, who=st.sampled_from([0, 1]), op=redeems)
    def redeem_points(self, who: int, op: Redeem) -> Any:
        return self.perform((who, op))

    @rule(target=written, who=st.sampled_from([0, 1]), op=deducts)
    def deduct_points(self, who: int, op: Deduct) -> Any:
        return self.perform((who, op))

    @rule(target=written, who=st.sampled_from([0, 1]), op=reverses)
    def reverse_points(self, who: int, op: Reverse) -> Any:
        return self.perform((who, op))

    @rule(
        who=st.sampled_from([0, 1]),
        customer=customers,
        points=st.integers(2, 60),
        hours=st.integers(1, 48),
        later=st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(days=3)]),
        reverse=reverses,
        deduct=deducts,
    )
    def spend_and_take_back(
        self,
        who: int,
        customer: str,
        points: int,
        hours: int,
        later: timedelta,
        reverse: Reverse,
        deduct: Deduct,
    ) -> None:
        """What a shop does around an order: points added (one lot valid for ``hours``), a
        redemption of all of them and a deduction, then, maybe after the lot expired, the
        redemption reversed."""
        soon = ValidUntil(hours=hours, past=False, form="Z")
        # Each step's entries are bound at once: the ids the server made name them later.
        for valid_until in (soon, None):
            self.perform((who, Add(customer, points, None, None, None, valid_until, ())))
            self.api_agrees_with_model()
        self.perform((who, Redeem(customer, "within", 60, None, None, ())))
        self.api_agrees_with_model()
        self.perform((who, replace(deduct, customer=customer)))
        self.api_agrees_with_model()
        self.clock.advance(seconds=later.total_seconds())
        self.touched.update(CUSTOMERS)
        redemptions = self.models[who].customers[customer].redemptions
        latest = max(i for i, r in enumerate(redemptions) if not r.deducted)
        spent = [r for r in redemptions if r.id and not r.deducted]
        self.perform(
            (who, replace(reverse, customer=customer, pick=spent.index(redemptions[latest])))
        )

    @precondition(lambda self: self.long_histories == 0)
    @rule(
        who=st.sampled_from([0, 1]),
        customer=customers,
        lots=st.integers(100, 200),
        minutes=st.lists(st.integers(0, 240), min_size=1, max_size=6),
        every=st.integers(4, 40),
        spend=st.integers(1, 100),
    )
    def long_history(
        self, who: int, customer: str, lots: int, minutes: list[int], every: int, spend: int
    ) -> None:
        """A customer with a long history, as a B2B account earns points per order line: lots
        one after another, each valid from half an hour to a few hours, the clock a minute on
        for every other lot (so lots expire between the writes), after every ``every`` lots a
        redemption of ``spend`` % of the balance, and at the end one of 90 %, which spends
        across most lots. Each answer, and each entry's allPointsAfterCreation in the
        summary, must be the model's; the rules after this one go on with the customer."""
        self.long_histories += 1
        for i in range(lots):
            valid_until = ValidUntil(0, False, "Z", minutes[i % len(minutes)])
            self.perform((who, Add(customer, 1 + i % 9, f"h-{i}", None, None, valid_until, ())))
            if i % every == every - 1:
                self.perform((who, Redeem(customer, "within", spend, f"h-r{i}", None, ())))
                self.clock.advance(minutes=every // 2)
        self.perform((who, Redeem(customer, "within", 90, "h-r", None, ())))
        self.bind_named(who, customer)

    @rule(target=written, who=st.sampled_from([0, 1]), op=creates)
    def create_entry(self, who: int, op: Create) -> Any:
        return self.perform((who, op))

    @rule(target=written, who=st.sampled_from([0, 1]), op=deletes)
    def delete_entry(self, who: int, op: Delete) -> Any:
        return self.perform((who, op))

    @rule(target=written, mine=writes, theirs=writes)
    def both_tenants_at_once(self, mine: Write, theirs: Write) -> Any:
        return self.perform((0, mine), (1, theirs))

    @rule(previous=written, computed=computed_fields)
    def send_again(self, previous: Sent, computed: tuple[tuple[str, Any], ...]) -> None:
        """The same request again (a client's retry), with other values in the fields the
        server computes and ignores."""
        names = IGNORED_FIELDS[previous.kind]
        body = {k: v for k, v in previous.body.items() if k not in names}
        body.update((k, v) for k, v in computed if k in names)
        self.perform((previous.who, replace(previous, body=body)))

    @rule(target=written, previous=written, who=st.sampled_from([0, 1]), op=adds | redeems)
    def reuse_id(self, previous: Sent, who: int, op: Add | Redeem) -> Any:
        """Another request under an id already written: other content for the same customer,
        a new entry for another customer or in the other tenant."""
        entry_id = previous.body["id"]
        return self.perform((who, replace(op, id=entry_id)))

    @rule(
        days=st.one_of(st.integers(0, 3), st.integers(0, 60), st.integers(0, 1200)),
        hours=st.integers(0, 23),
    )
    def advance_clock(self, days: int, hours: int) -> None:
        self.clock.advance(days=days, hours=hours)
        self.touched.update(CUSTOMERS)

    @rule(pick=st.integers(0, 1000), offset=st.sampled_from(BOUNDARY_OFFSETS))
    def clock_onto_a_valid_until(self, pick: int, offset: timedelta) -> None:
        """The clock onto a lot's validUntil, or a millisecond before it: the moment a lot
        stops counting, for every read and write that follows."""
        moments = sorted(
            moment + offset
            for model in self.models
            for moment in model.valid_until_moments()
            if moment + offset > self.clock.now
        )
        if moments:
            self.clock.now = moments[pick % len(moments)]
            self.touched.update(CUSTOMERS)

    # ---- reads ---------------------------------------------------------------------------

    @rule(who=st.sampled_from([0, 1]), customer=customers)
    def read_customer(self, who: int, customer: str) -> None:
        """The balance and the summary, as a shop would read them."""
        model = self.models[who]
        balance, summary = self.run_all(
            [self.http_get(who, customer_path(customer)), self.summary_of(who, customer)]
        )
        self.check_summary(who, customer, summary)
        if customer not in model.customers:
            self.assert_not_found(balance, customer)
            return
        assert balance.status_code == 200, balance.text
        assert balance.headers["content-type"] == "application/json"
        assert balance.json() == model.active_points(customer, self.clock.now)

    @rule(
        who=st.sampled_from([0, 1]),
        customer=customers,
        picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    )
    def balance_in_the_past(self, who: int, customer: str, picks: list[int]) -> None:
        """The balance at instants between past steps, and on and just before the lots'
        validUntil (where no step wrote), as the model had it then."""
        model = self.models[who]
        windows = [(t, t + timedelta(milliseconds=1)) for t in self.step_times]
        boundaries = [
            moment + offset
            for moment in model.valid_until_moments()
            for offset in BOUNDARY_OFFSETS
            if moment + offset <= self.clock.now
            and not any(start <= moment + offset < end for start, end in windows)
        ]
        moments = [t + timedelta(microseconds=500) for t in self.step_times] + boundaries
        if not moments:
            return
        chosen = [moments[pick % len(moments)] for pick in picks]
        path = customer_path(customer, "/balance")
        answers = self.run_all(
            self.http_get(who, f"{path}?at={quote(moment.isoformat())}") for moment in chosen
        )
        for moment, response in zip(chosen, answers, strict=True):
            if customer not in model.customers:
                self.assert_not_found(response, customer)
                continue
            assert response.status_code == 200, response.text
            body = response.json()
            assert parse_time(body["at"]) == moment.replace(
                microsecond=moment.microsecond // 1000 * 1000
            )
            assert body["activePoints"] == model.balance_at(customer, moment), moment

    @rule(who=st.sampled_from([0, 1]))
    def summary_batch(self, who: int) -> None:
        response = self.run(self.http_get(who, f"{BASE}/summaryBatch"))
        assert response.status_code == 200, response.text
        model = self.models[who]
        now = self.clock.now
        for summary in response.json():
            assert_ledger_rules(summary, now, summary["customerId"])
        assert_same(
            response.json(),
            [model.summary_json(customer, now) for customer in sorted(model.customers)],
        )

    # ---- after every step ----------------------------------------------------------------

    @invariant()
    def api_agrees_with_model(self) -> None:
        """The touched customers, in both tenants: learn what the last step wrote, then
        compare each summary with the model and check the ledger's rules on it."""
        if self.http is None or not (self.touched or self.pending):
            return
        customer_ids = sorted(self.touched | {p[1] for p in self.pending})

        responses = iter(
            self.run_all(self.summary_of(who, c) for who in (0, 1) for c in customer_ids)
        )
        seen = {(who, c): next(responses) for who in (0, 1) for c in customer_ids}
        for who, customer, entry, before, after in self.pending:
            self.bind(who, entry, seen[who, customer], before, after)
        self.pending.clear()
        for (who, customer), response in seen.items():
            self.check_summary(who, customer, response)
        self.touched.clear()

    # ---- helpers -------------------------------------------------------------------------

    def perform(self, *ops: tuple[int, Write | Sent]) -> Any:
        """Send writes at once (one per tenant), then compare each answer with the model."""
        before = self.clock.now
        requests = [
            op if isinstance(op, Sent) else self.resolve(who, op, before) for who, op in ops
        ]
        responses = self.run_all(self.send(request) for request in requests)
        after = self.clock.now
        self.clock.advance(milliseconds=1)  # the next step's entries come later
        self.step_times.append(before)
        identified: list[Sent] = []
        for request, response in zip(requests, responses, strict=True):
            outcome = self.apply(request, before)
            self.assert_answer(request, response, outcome)
            if outcome.reversal is not None and outcome.reversal.id is None:
                outcome.reversal.id = response.json()["id"]  # the id the server made
            self.touched.add(request.customer)
            if outcome.written is not None:
                self.pending.append((request.who, request.customer, outcome.written, before, after))
                if request.kind in IGNORED_FIELDS and "id" in request.body:
                    identified.append(request)
        return multiple(*identified)

    def resolve(self, who: int, op: Write, now: datetime) -> Sent:
        match op:
            case Add():
                lot, body = self.lot_body(op, now)
                return Sent(who, "add", op.customer, body, lot=lot)
            case Redeem():
                active = self.models[who].active_points(op.customer, now)
                points = {
                    "within": 1 + (active - 1) * min(op.n, 100) // 100 if active else 1,
                    "exact": max(active, 1),
                    "beyond": active + 1 + op.n,
                    "fixed": max(op.n, 1),
                }[op.amount]
                body = {"points": points}
                if op.id is not None:
                    body["id"] = op.id
                if op.description is not None:
                    body["description"] = op.description
                body.update(op.computed)
                redemption = RedemptionRequest(points, op.id, op.description)
                return Sent(who, "redeem", op.customer, body, redemption=redemption)
            case Deduct():
                active = self.models[who].active_points(op.customer, now)
                points = {
                    "within": 1 + (active - 1) * min(op.n, 100) // 100 if active else 1,
                    "exact": max(active, 1),
                    "beyond": active + 1 + op.n,
                    "fixed": max(op.n, 1),
                }[op.amount]
                customer = self.models[who].customers.get(op.customer)
                lot_ids = [lot.id for lot in customer.lots if lot.id] if customer else []
                lot_id = None
                if op.lot == -1:
                    lot_id = "no-such-lot"
                elif op.lot is not None and lot_ids:
                    lot_id = lot_ids[op.lot % len(lot_ids)]
                body = {"points": points}
                body.update(
                    (k, v)
                    for k, v in {"id": op.id, "lotId": lot_id, "reason": op.reason}.items()
                    if v is not None
                )
                deduction = DeductionRequest(points, op.id, None, lot_id, op.reason)
                return Sent(who, "deduct", op.customer, body, deduction=deduction)
            case Reverse():
                customer = self.models[who].customers.get(op.customer)
                spent = [
                    r for r in (customer.redemptions if customer else []) if r.id and not r.deducted
                ]
                target = spent[op.pick % len(spent)] if spent and op.pick >= 0 else None
                left = target.points - target.reversed_points if target else 0
                given = {
                    "all": None,
                    "one": 1,
                    "some": 1 + max(left - 1, 0) * op.n // 100,
                    "too_many": left + 1 + op.n,
                }[op.points]
                redemption_id = target.id if target and target.id else "no-such-r"
                body = {"redemptionId": redemption_id}
                fields: dict[str, Any] = {"points": given, "id": op.id, "reason": op.reason}
                body.update((k, v) for k, v in fields.items() if v is not None)
                reversal = ReversalRequest(redemption_id, given, op.id, op.reason)
                return Sent(who, "reverse", op.customer, body, reversal=reversal)
            case Create():
                body_customer = {"same": op.customer, "other": op.customer + "-x"}.get(op.body)
                if op.body == "start" and op.start is not None:
                    lot, start = self.lot_body(op.start, now)
                    return Sent(who, "create", op.customer, {"startPoints": start}, lot=lot)
                entry: dict[str, Any] | None = None if op.body == "none" else {}
                if body_customer is not None:
                    entry = {"customerId": body_customer}
                return Sent(who, "create", op.customer, entry, body_customer=body_customer)
            case Delete():
                return Sent(who, "delete", op.customer, None)

    @staticmethod
    def lot_body(op: Add, now: datetime) -> tuple[LotRequest, dict[str, Any]]:
        valid_until = op.valid_until.moment(now) if op.valid_until else None
        body: dict[str, Any] = {"points": op.points}
        optional = {"id": op.id, "reference-id": op.reference_id, "description": op.description}
        body.update((k, v) for k, v in optional.items() if v is not None)
        if op.valid_until is not None and valid_until is not None:
            body["validUntil"] = op.valid_until.text(valid_until)
        body.update(op.computed)
        return LotRequest(op.points, op.id, op.reference_id, op.description, valid_until), body

    def apply(self, request: Sent, now: datetime) -> Outcome:
        model = self.models[request.who]
        match request.kind:
            case "add":
                assert request.lot is not None
                return model.add(request.customer, request.lot, now)
            case "redeem":
                assert request.redemption is not None
                return model.redeem(request.customer, request.redemption, now)
            case "deduct":
                assert request.deduction is not None
                return model.deduct(request.customer, request.deduction, now)
            case "reverse":
                assert request.reversal is not None
                return model.reverse(request.customer, request.reversal, now)
            case "create":
                return model.create(request.customer, request.lot, now, request.body_customer)
            case _:
                return model.delete(request.customer)

    async def send(self, request: Sent) -> httpx.Response:
        assert self.http is not None
        headers = self.headers[request.who]
        path = customer_path(request.customer, ACTIONS.get(request.kind, ""))
        if request.kind == "delete":
            return await self.http.delete(path, headers=headers)
        return await self.http.post(path, json=request.body, headers=headers)

    async def http_get(self, who: int, path: str) -> httpx.Response:
        assert self.http is not None
        return await self.http.get(path, headers=self.headers[who])

    async def summary_of(self, who: int, customer: str) -> httpx.Response:
        return await self.http_get(who, customer_path(customer, "/summary"))

    def assert_answer(self, request: Sent, response: httpx.Response, outcome: Outcome) -> None:
        context = f"model expects {outcome}: {request!r} -> {response.status_code} {response.text}"
        assert response.status_code in outcome.statuses, context
        if not outcome.errors and request.kind in ("deduct", "reverse"):
            answer = response.json()
            given_id = request.body.get("id")
            assert given_id is None or answer["id"] == given_id, context
            if outcome.answer is not None:
                assert answer == {"id": answer["id"], **outcome.answer}, context
            return
        if not outcome.errors:
            assert response.content == b"", context
            return
        body = response.json()
        assert any(
            self.explains(error, body, request, response)
            for error in outcome.errors
            if error.status == response.status_code
        ), context

    @staticmethod
    def explains(error: Error, body: Any, request: Sent, response: httpx.Response) -> bool:
        """Whether an error body is the one CONTRACT 4 prescribes for this refusal."""
        match error.kind:
            case "not_found":
                return bool(body == not_found_body(request.customer))
            case "exists":
                detail = (
                    "Couldn't create a new reward point entry for the customer "
                    f"'{request.customer}'"
                )
                return bool(
                    body["status"] == 409
                    and body["message"] == "New Reward Point Entry not Created"
                    and body["details"][0]["message"] == detail
                )
            case "id_conflict":
                return bool(body["status"] == 409)
            case "no_redemption":
                redemption = request.body["redemptionId"]
                return bool(
                    body
                    == {
                        "type": "resource_not_found",
                        "status": 404,
                        "message": f"No redemption {redemption} found for customer "
                        f"{request.customer}",
                    }
                )
        instance = response.request.url.path.removeprefix(BASE)
        if (body["status"], body["title"], body["instance"]) != (400, "Bad Request", instance):
            return False
        if error.kind == "insufficient":
            # The message names both numbers: the points asked for and the points there are.
            return all(
                re.search(rf"(?<!\d){number}(?!\d)", body["detail"])
                for number in (error.requested, error.available)
            )
        return True

    @staticmethod
    def assert_not_found(response: httpx.Response, customer: str) -> None:
        assert response.status_code == 404, response.text
        assert response.json() == not_found_body(customer)

    def bind(
        self, who: int, entry: Entry, response: httpx.Response, before: datetime, after: datetime
    ) -> None:
        """Find the entry the step wrote in the API's summary and teach the model its id and
        ``createdAt``; it must be the newest of its list, made during the request."""
        assert response.status_code == 200, response.text
        lists = response.json()["summary"]
        listed = lists["addedPointsList" if isinstance(entry, Lot) else "redeemedPointsList"]
        model = self.models[who]
        owner = next(c for c, e in model.entries() if e is entry)
        known = {
            e.id for c, e in model.entries() if c == owner and e is not entry and e.id is not None
        }
        fresh = [item for item in listed if item["id"] not in known]
        assert len(fresh) == 1, f"expected one new entry, the API lists {fresh}"
        written = fresh[0]
        assert written is listed[-1], "the newest entry must be listed last"
        if entry.id is None:
            assert uuid.UUID(written["id"]).version == 4, written
        else:
            assert written["id"] == entry.id, written
        created_at = parse_time(written["createdAt"])
        assert before <= created_at <= after, (before, written, after)
        model.bind(entry, written["id"], created_at)

    def bind_named(self, who: int, customer: str) -> None:
        """Teach the model the ``createdAt`` of each entry a step wrote under a client-given
        id for one customer, from one summary: made during its request, and listed in the
        order written."""
        response = self.run(self.summary_of(who, customer))
        assert response.status_code == 200, response.text
        lists = response.json()["summary"]
        listed = {
            item["id"]: (parse_time(item["createdAt"]), position)
            for name in ("addedPointsList", "redeemedPointsList")
            for position, item in enumerate(lists[name])
        }
        model = self.models[who]
        mine = [p for p in self.pending if p[:2] == (who, customer)]
        self.pending = [p for p in self.pending if p[:2] != (who, customer)]
        positions: dict[bool, list[int]] = {True: [], False: []}
        for _, _, entry, before, after in mine:
            assert entry.id is not None
            created_at, position = listed[entry.id]
            assert before <= created_at <= after, (before, entry.id, created_at, after)
            positions[isinstance(entry, Lot)].append(position)
            model.bind(entry, entry.id, created_at)
        for written in positions.values():
            assert written == sorted(written), "entries are listed in the order written"

    def check_summary(self, who: int, customer: str, response: httpx.Response) -> None:
        model = self.models[who]
        if customer not in model.customers:
            self.assert_not_found(response, customer)
            return
        assert response.status_code == 200, response.text
        body = response.json()
        now = self.clock.now
        assert_ledger_rules(body, now, customer)
        assert_same(body, model.summary_json(customer, now))


def first_difference(api: Any, model: Any, where: str = "") -> str | None:
    """Where two JSON values first differ, as ``where: API ... model ...``."""
    if isinstance(api, dict) and isinstance(model, dict) and api.keys() == model.keys():
        for key in model:
            found = first_difference(api[key], model[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(api, list) and isinstance(model, list) and len(api) == len(model):
        for index, (a, m) in enumerate(zip(api, model, strict=True)):
            found = first_difference(a, m, f"{where}[{index}]")
            if found:
                return found
        return None
    if type(api) is type(model) and api == model:
        return None
    return f"{where or 'the answer'}: API {api!r}, model {model!r}"


def assert_same(api: Any, model: Any) -> None:
    difference = first_difference(api, model)
    assert difference is None, f"the API and the model differ at {difference}"


def assert_ledger_rules(body: dict[str, Any], now: datetime, customer: str) -> None:
    """CONTRACT 2 on one customer's summary, from the API's answer alone."""
    assert body["customerId"] == customer
    lots = body["summary"]["addedPointsList"]
    redemptions = body["summary"]["redeemedPointsList"]
    unexpired = [lot for lot in lots if parse_time(lot["validUntil"]) > now]
    assert body["activePoints"] == sum(lot["points"] - lot["usedPoints"] for lot in unexpired)
    for lot in lots:
        assert 0 <= lot["usedPoints"] <= lot["points"], lot
        assert len(set(lot["usedWith"])) == len(lot["usedWith"]), lot
    assert sum(r["points"] for r in redemptions) == sum(lot["usedPoints"] for lot in lots)
    # A redemption reversed whole holds no points of any lot any more.
    redemption_ids = {r["id"] for r in redemptions if r["points"]}
    used_with = {rid for lot in lots for rid in lot["usedWith"]}
    assert used_with == redemption_ids, "usedWith must name exactly the redemptions"
    for entries in (lots, redemptions):
        order = [(parse_time(e["createdAt"]), e["id"].encode()) for e in entries]
        assert order == sorted(order), "lists are in ascending createdAt order"


def test_ledger_behaves_like_its_model(pg_url: str) -> None:
    machine = type("LedgerMachine_postgresql", (LedgerMachine,), {"database_url": pg_url})
    run_state_machine_as_test(machine, settings=PROFILE)
