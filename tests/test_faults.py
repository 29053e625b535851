"""Faults against real ``rewardpoints serve`` processes on loopback.

- A worker killed with SIGKILL in the middle of a burst of keyed adds and redeems (two
  workers, restarted by uvicorn's supervisor).
- PostgreSQL under load: the service's connections terminated again and again, and a
  throwaway PostgreSQL server crashed and restarted (``pg_ctl restart -m immediate``).
- One customer's lock held elsewhere: by an open transaction and by a stopped (SIGSTOP)
  worker; and requests for a locked customer holding every pooled connection.

After each fault every write is retried with its Idempotency-Key until it has an answer, and
then: every answer is replayed the same, no acknowledged write is lost, none is applied twice,
and the ledger's invariants hold.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from .conftest import TEST_SECRET
from .support import (
    ServerProcess,
    restart_throwaway_postgres,
    server_process,
    socket_owner,
    start_throwaway_postgres,
)

pytestmark = pytest.mark.slow

Headers = dict[str, str]
# A request that hangs longer than this is a failure: no fault may make the service hang.
CLIENT_TIMEOUT = 10.0
RETRY_PAUSE = 0.1
MAX_ATTEMPTS = 100


# ---- databases and servers ------------------------------------------------------------------


def _connect_args(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    return {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 5432,
        "user": parsed.username or "postgres",
        "password": parsed.password,
        "database": parsed.database or "postgres",
        "timeout": 10,
    }


async def pg_connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(**_connect_args(url))


async def _admin(url: str, *statements: str) -> None:
    conn = await pg_connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def fresh_pg(pg_server_url: str) -> Iterator[str]:
    """An empty database of this test's own (the server migrates it when it starts): faults
    aimed at its connections reach nothing else on the PostgreSQL server."""
    name = f"rp_fault_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(pg_server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(pg_server_url, name)
    finally:
        asyncio.run(_admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass(frozen=True)
class Throwaway:
    url: str  # the service's database on the throwaway server
    data_directory: str


@pytest.fixture
def throwaway_pg() -> Iterator[Throwaway]:
    """A PostgreSQL server of this test's own, which it may crash and restart."""
    with start_throwaway_postgres() as server_url:

        async def prepare() -> str:
            conn = await pg_connect(server_url)
            try:
                await conn.execute('CREATE DATABASE "rewardpoints"')
                return str(await conn.fetchval("SHOW data_directory"))
            finally:
                await conn.close()

        data_directory = asyncio.run(prepare())
        yield Throwaway(_with_database(server_url, "rewardpoints"), data_directory)


def server_env(
    database_url: str, *, lock_timeout_ms: int = 5000, pool_size: int = 10
) -> dict[str, str]:
    return {
        "REWARDPOINTS_DATABASE_URL": database_url,
        "REWARDPOINTS_JWT_SECRET": TEST_SECRET,
        "REWARDPOINTS_LOCK_TIMEOUT_MS": str(lock_timeout_ms),
        "REWARDPOINTS_DATABASE_POOL_SIZE": str(pool_size),
    }


@contextlib.asynccontextmanager
async def http_client(timeout: float = CLIENT_TIMEOUT) -> AsyncIterator[httpx.AsyncClient]:
    """No keep-alive: every request opens its own connection, so none is tied to a worker
    that the test kills or stops."""
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        yield http


async def eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 5.0) -> Any:
    """Poll ``probe`` until it returns something true, and return that; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := await probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return value


async def wait_for_workers(server: ServerProcess, count: int, gone: list[int]) -> list[int]:
    """Until uvicorn's supervisor has ``count`` live workers again, none of them in ``gone``."""
    deadline = time.monotonic() + 30
    while True:
        pids = server.worker_pids()
        if len(pids) == count and not set(pids) & set(gone):
            return pids
        assert time.monotonic() < deadline, f"workers not replaced: {pids}\n{server.output()}"
        await asyncio.sleep(0.2)


# ---- keyed writes and their answers --------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    content: bytes
    replayed: bool
    retry_after: str | None
    elapsed: float

    @property
    def retryable(self) -> bool:
        """503, or 409 because the same key is still running somewhere: ask again later."""
        if self.status == 503:
            return True
        return self.status == 409 and _conflict_field(self.content) == "Idempotency-Key"


def _conflict_field(content: bytes) -> str | None:
    try:
        details = json.loads(content)["details"]
        return str(details[0]["field"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


@dataclass
class Write:
    """One addPoints or redeemPoints request, with its Idempotency-Key and every answer it got.

    Its ``description`` is unique, so its entries can be counted in the summary. Some writes
    also carry a body ``id``; the others leave the id to the server, so for them only the
    Idempotency-Key stands between a retry and a second write. A write sent without its key
    (not ``keyed``) has a body id, which alone makes its retries safe; it takes the fast lane."""

    customer: str
    action: str  # "addPoints" or "redeemPoints"
    points: int
    key: str
    body: dict[str, Any]
    keyed: bool = True
    answers: list[Answer] = field(default_factory=list)
    transport_errors: int = 0

    @property
    def description(self) -> str:
        return str(self.body["description"])

    @property
    def final(self) -> Answer | None:
        """The first answer that is not "try again": the one every retry must replay."""
        return next((answer for answer in self.answers if not answer.retryable), None)

    @property
    def applied(self) -> bool:
        final = self.final
        return final is not None and final.status == 201


def make_write(
    customer: str, action: str, points: int, label: str, *, body_id: bool, keyed: bool = True
) -> Write:
    assert keyed or body_id, "a write without a key needs a body id to be retried safely"
    body: dict[str, Any] = {"points": points, "description": f"fault test {label}"}
    if body_id:
        body["id"] = f"id-{label}"
    return Write(customer, action, points, f"key-{label}-{secrets.token_hex(4)}", body, keyed)


def funding(customers: list[str], points: int = 100) -> list[Write]:
    return [make_write(c, "addPoints", points, f"fund-{c}", body_id=True) for c in customers]


def burst(customers: list[str], count: int, seed: int) -> list[Write]:
    """Rounds over the customers, adds and redeems in turn; half the writes of each kind carry
    a body id. Some redeems ask for more than is left and are refused with 400, which is an
    answer too."""
    rng = random.Random(seed)
    writes = []
    for index in range(count):
        customer, round_ = customers[index % len(customers)], index // len(customers)
        add = round_ % 2 == 0
        writes.append(
            make_write(
                customer,
                "addPoints" if add else "redeemPoints",
                rng.randint(1, 20) if add else rng.randint(5, 60),
                f"b{index}",
                body_id=round_ % 4 < 2,
            )
        )
    return writes


async def post(
    http: httpx.AsyncClient,
    base: str,
    headers: Headers,
    write: Write,
    *,
    timeout: float | None = None,
) -> Answer | None:
    """Send the write once; None when no HTTP answer came back (connection refused, reset, or
    no answer within ``timeout`` when given)."""
    started = time.monotonic()
    if write.keyed:
        headers = {**headers, "Idempotency-Key": write.key}
    try:
        response = await http.post(
            f"{base}/reward-points/customer/{write.customer}/{write.action}",
            json=write.body,
            headers=headers,
            timeout=http.timeout if timeout is None else timeout,
        )
    except httpx.TransportError:
        write.transport_errors += 1
        return None
    answer = Answer(
        response.status_code,
        response.content,
        response.headers.get("idempotent-replayed") == "true",
        response.headers.get("retry-after"),
        time.monotonic() - started,
    )
    write.answers.append(answer)
    return answer


async def send_all(
    http: httpx.AsyncClient,
    base: str,
    headers: Headers,
    writes: list[Write],
    *,
    concurrency: int | None = None,
    on_answer: Callable[[int], None] | None = None,
) -> None:
    """Send every write once, all at once or ``concurrency`` at a time; ``on_answer`` hears
    the running count of finished requests (answered or not)."""
    gate = asyncio.Semaphore(concurrency or len(writes))
    finished = 0

    async def one(write: Write) -> None:
        nonlocal finished
        async with gate:
            await post(http, base, headers, write)
        finished += 1
        if on_answer is not None:
            on_answer(finished)

    await asyncio.gather(*(one(write) for write in writes))


async def settle(http: httpx.AsyncClient, base: str, headers: Headers, writes: list[Write]) -> None:
    """Retry every write without a final answer, with its key, until it has one."""
    gate = asyncio.Semaphore(20)

    async def one(write: Write) -> None:
        for _ in range(MAX_ATTEMPTS):
            if write.final is not None:
                return
            async with gate:
                await post(http, base, headers, write)
            if write.final is None:
                await asyncio.sleep(RETRY_PAUSE)  # back off, as a client would
        raise AssertionError(f"no answer after {MAX_ATTEMPTS} attempts: {write}")

    await asyncio.gather(*(one(write) for write in writes if write.final is None))


async def check_replays(
    http: httpx.AsyncClient, base: str, headers: Headers, writes: list[Write]
) -> None:
    """Send every write once more: each must get back its final answer, marked replayed."""
    finals = {id(write): write.final for write in writes}
    await send_all(http, base, headers, writes, concurrency=20)
    mismatches = []
    for write in writes:
        first, again = finals[id(write)], write.answers[-1]
        assert first is not None
        if (again.status, again.content, again.replayed) != (first.status, first.content, True):
            mismatches.append((write.key, first, again))
    assert not mismatches, mismatches


def assert_answers_are_allowed(writes: list[Write]) -> None:
    """Adds answer 201, redeems 201 or 400 for too few points; 503 (and 409 for a key still
    running) only ask for a retry. Never a 500, never a stack trace."""
    for write in writes:
        for answer in write.answers:
            text = answer.content.decode(errors="replace")
            assert "Traceback" not in text and 'File "' not in text, text
            if answer.retryable:
                if answer.status == 503:
                    assert_service_unavailable(answer)
                continue
            if write.action == "redeemPoints" and answer.status == 400:
                body = json.loads(answer.content)
                assert body["status"] == 400
                assert f"requested {write.points}" in body["detail"], body
            else:
                assert (answer.status, answer.content) == (201, b""), (write.key, answer)


def assert_service_unavailable(answer: Answer) -> None:
    assert answer.status == 503
    body = json.loads(answer.content)
    assert set(body) == {"timestamp", "status", "error", "path"}, body
    assert body["status"] == 503 and body["error"] == "Service Unavailable", body
    assert answer.retry_after is not None


# ---- the ledger afterwards -----------------------------------------------------------------


async def check_ledger(
    http: httpx.AsyncClient, base: str, headers: Headers, writes: list[Write]
) -> None:
    """Every acknowledged write is in the data exactly once, every refused or never-applied
    one not at all, and each customer's summary keeps the ledger's invariants."""
    customers = sorted({write.customer for write in writes})
    for customer in customers:
        mine = [write for write in writes if write.customer == customer]
        summary_response = await http.get(
            f"{base}/reward-points/customer/{customer}/summary", headers=headers
        )
        balance_response = await http.get(
            f"{base}/reward-points/customer/{customer}", headers=headers
        )
        assert summary_response.status_code == 200, summary_response.text
        assert balance_response.status_code == 200, balance_response.text
        summary = summary_response.json()
        lots = summary["summary"]["addedPointsList"]
        redemptions = summary["summary"]["redeemedPointsList"]

        expected = sum(w.points for w in mine if w.applied and w.action == "addPoints") - sum(
            w.points for w in mine if w.applied and w.action == "redeemPoints"
        )
        assert balance_response.json() == summary["activePoints"] == expected, customer

        # Exactly once: count each write's entries by its unique description.
        entries = {"addPoints": lots, "redeemPoints": redemptions}
        wrong = []
        for write in mine:
            found = [e for e in entries[write.action] if e["description"] == write.description]
            if len(found) != (1 if write.applied else 0):
                wrong.append((write.key, write.final, len(found)))
            elif found:
                assert found[0]["points"] == write.points
                if "id" in write.body:
                    assert found[0]["id"] == write.body["id"]
        assert not wrong, f"{customer}: writes applied a wrong number of times: {wrong}"
        known = {write.description for write in mine}
        assert {e["description"] for e in lots + redemptions} <= known, "an entry nobody sent"

        # The ledger's invariants.
        redemption_ids = [r["id"] for r in redemptions]
        assert len(set(redemption_ids)) == len(redemption_ids)
        assert len({lot["id"] for lot in lots}) == len(lots)
        for lot in lots:
            assert 0 <= lot["usedPoints"] <= lot["points"], lot
            assert set(lot["usedWith"]) <= set(redemption_ids), lot
            assert (lot["usedPoints"] > 0) == bool(lot["usedWith"]), lot
        used = sum(lot["usedPoints"] for lot in lots)
        assert used == sum(r["points"] for r in redemptions)
        assert sum(lot["points"] for lot in lots) - used == expected
        assert set().union(*(lot["usedWith"] for lot in lots)) == set(redemption_ids)
        assert running_balance(lots, redemptions) == expected, customer


def running_balance(lots: list[dict[str, Any]], redemptions: list[dict[str, Any]]) -> int:
    """Apply the entries in ``createdAt`` order, checking each ``allPointsAfterCreation``
    against the running balance; entries of one millisecond go in whichever order fits."""
    entries = [(datetime.fromisoformat(e["createdAt"]), e["points"], e) for e in lots]
    entries += [(datetime.fromisoformat(e["createdAt"]), -e["points"], e) for e in redemptions]
    entries.sort(key=lambda entry: entry[0])
    balance, position = 0, 0
    while position < len(entries):
        group = [e for e in entries[position:] if e[0] == entries[position][0]]
        position += len(group)
        while group:
            fitting = [e for e in group if e[2]["allPointsAfterCreation"] == balance + e[1]]
            assert fitting, f"no entry continues the running balance {balance}: {group}"
            group.remove(fitting[0])
            balance += fitting[0][1]
    return balance


def outcome(label: str, writes: list[Write], started: float) -> None:
    """One line of numbers for the record (``pytest -s`` shows it). The last answer of every
    write is the replay check's, and is left out."""
    tries = [answer for write in writes for answer in write.answers[:-1]]
    statuses: dict[int, int] = {}
    for answer in tries:
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    lost = sum(write.transport_errors for write in writes)
    retried = [w for w in writes if w.transport_errors or w.answers[0].retryable]
    print(
        f"\n[{label}] {len(writes)} writes, {len(tries) + lost} attempts, {lost} without an "
        f"answer, statuses {dict(sorted(statuses.items()))}; {len(retried)} writes retried, "
        f"{sum(1 for w in retried if w.final and w.final.replayed)} of them had committed "
        f"(answer replayed); {sum(1 for w in writes if w.applied)} applied; "
        f"{time.monotonic() - started:.1f} s"
    )


async def fund(http: httpx.AsyncClient, base: str, headers: Headers, writes: list[Write]) -> None:
    await send_all(http, base, headers, writes)
    assert [w.final and w.final.status for w in writes] == [201] * len(writes)


# ---- 1. kill -9 in the middle of a burst ---------------------------------------------------


async def test_a_worker_killed_mid_burst_loses_no_acknowledged_write_and_repeats_none(
    fresh_pg: str, headers: Headers
) -> None:
    started = time.monotonic()
    customers = [f"c{index}" for index in range(8)]
    writes = funding(customers) + burst(customers, 200, seed=1)
    with server_process(server_env(fresh_pg), workers=2) as server:
        async with http_client() as http:
            await fund(http, server.base, headers, writes[:8])
            killed: list[int] = []

            def kill_a_worker(finished: int) -> None:
                if finished == 30:
                    killed.append(server.worker_pids()[0])
                    os.kill(killed[0], signal.SIGKILL)

            await send_all(http, server.base, headers, writes[8:], on_answer=kill_a_worker)

            assert killed
            dropped = [write for write in writes if write.transport_errors]
            assert dropped, "the kill cut no request off: the test proved nothing"
            await settle(http, server.base, headers, writes)
            await wait_for_workers(server, 2, gone=killed)
            assert_answers_are_allowed(writes)
            await check_replays(http, server.base, headers, writes)
            await check_ledger(http, server.base, headers, writes)
    outcome("kill -9 worker, postgresql", writes, started)


# ---- 2. PostgreSQL failing under load ------------------------------------------------------


AFTER_THE_FAULT = 40


@dataclass
class UnderFault:
    writes: list[Write]  # every write sent, the funding first
    after: list[Write]  # those sent once the fault was over


async def run_under_fault(
    server: ServerProcess,
    headers: Headers,
    funded: list[Write],
    pool: list[Write],
    fault: Callable[[Callable[[int], Awaitable[None]]], Awaitable[None]],
) -> UnderFault:
    """Send writes from ``pool``, 16 at a time and each until it has an answer, while
    ``fault`` runs and until AFTER_THE_FAULT more have been sent after it; ``fault`` gets a
    coroutine function that waits until n writes have finished. Then check every write
    sent, the ``funded`` ones included."""
    finished = 0
    fault_over: list[float] = []
    sent: list[Write] = []
    after: list[Write] = []
    queue = iter(pool)

    async def reached(count: int) -> None:
        while finished < count:
            await asyncio.sleep(0.01)

    async def injector() -> None:
        await fault(reached)
        fault_over.append(time.monotonic())

    async with http_client() as http:

        async def sender() -> None:
            nonlocal finished
            while len(after) < AFTER_THE_FAULT:
                write = next(queue, None)
                if write is None:
                    return
                sent.append(write)
                if fault_over:
                    after.append(write)
                # A client retries a write until it has an answer, pausing between tries.
                for _ in range(MAX_ATTEMPTS):
                    await post(http, server.base, headers, write)
                    if write.final is not None:
                        break
                    await asyncio.sleep(RETRY_PAUSE)
                finished += 1

        await asyncio.gather(injector(), *(sender() for _ in range(16)))
        assert fault_over, "the fault never ran"
        writes = funded + sent
        await settle(http, server.base, headers, writes)
        assert_answers_are_allowed(writes)
        assert not [w for w in writes if w.transport_errors], "the service itself went away"
        await check_replays(http, server.base, headers, writes)
        await check_ledger(http, server.base, headers, writes)
    return UnderFault(writes, after)


def assert_recovered(run: UnderFault) -> None:
    """The fault was felt (some 503s), and every write sent after it was over was answered
    at the first attempt: the service recovered by itself."""
    unavailable = [a for w in run.writes for a in w.answers if a.status == 503]
    assert unavailable, "no request saw the outage: the test proved nothing"
    assert len(run.after) == AFTER_THE_FAULT, "the load ran out before the fault was over"
    late = [(w.key, w.answers[0]) for w in run.after if w.answers[0].retryable]
    assert not late, f"still failing after the fault was over: {late}"


async def test_terminated_postgres_connections_answer_503_and_the_service_recovers_by_itself(
    fresh_pg: str, pg_server_url: str, headers: Headers
) -> None:
    started = time.monotonic()
    database = make_url(fresh_pg).database
    customers = [f"c{index}" for index in range(8)]
    funded, pool = funding(customers), burst(customers, 1000, seed=3)
    terminated: list[int] = []
    admin = await pg_connect(pg_server_url)
    try:
        with server_process(server_env(fresh_pg), workers=2) as server:
            workers = sorted(server.worker_pids())
            async with http_client() as http:
                await fund(http, server.base, headers, funded)

            async def terminate_repeatedly(reached: Callable[[int], Awaitable[None]]) -> None:
                for round_ in range(1, 11):
                    await reached(15 * round_)
                    # Materialised first, so nothing but the service's own connections to
                    # this test's database is ever terminated.
                    rows = await admin.fetch(
                        "WITH targets AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
                        "WHERE datname = $1 AND application_name = 'rewardpoints') "
                        "SELECT pid FROM targets WHERE pg_terminate_backend(pid)",
                        database,
                    )
                    terminated.extend(row["pid"] for row in rows)
                await eventually(
                    lambda: admin.fetchval(
                        "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = ANY($1::int[])",
                        terminated,
                    ),
                    "the terminated backends to be gone",
                )

            run = await run_under_fault(server, headers, funded, pool, terminate_repeatedly)
            assert terminated
            assert_recovered(run)
            assert sorted(server.worker_pids()) == workers, "a worker was restarted"
    finally:
        await admin.close()
    outcome(f"pg_terminate_backend x{len(terminated)}", run.writes, started)


MIXED_LOAD_SECONDS = 25.0
TERMINATE_EVERY_SECONDS = 1.5


async def test_backends_terminated_under_a_mixed_load_answer_503_or_succeed_never_500(
    fresh_pg: str, pg_server_url: str, headers: Headers
) -> None:
    """For 25 s, two workers serve balance and summary reads, adds and redeems with an
    Idempotency-Key, and adds and redeems without one (the fast lane: statements sent straight
    to the driver, coalesced under load), some of them from clients that give up after a few
    milliseconds; meanwhile every 1.5 s the service's PostgreSQL connections are terminated,
    busy or idle in the pool. Every answer is a success, a ledger refusal or 503 with
    Retry-After, never 500; every acknowledged write is in the ledger exactly once."""
    started = time.monotonic()
    database = make_url(fresh_pg).database
    customers = [f"c{index}" for index in range(8)]
    rng = random.Random(5)
    writes = funding(customers)
    reads: list[Answer] = []
    terminated: list[int] = []
    # Requests whose client went away before the answer.
    writes_given_up = reads_given_up = 0
    count = 0

    def next_write(*, keyed: bool) -> Write:
        nonlocal count
        count += 1
        add = rng.random() < 0.5
        write = make_write(
            rng.choice(customers),
            "addPoints" if add else "redeemPoints",
            rng.randint(1, 20) if add else rng.randint(5, 40),
            f"m{count}",
            body_id=not keyed or rng.random() < 0.5,
            keyed=keyed,
        )
        writes.append(write)
        return write

    admin = await pg_connect(pg_server_url)
    try:
        with server_process(server_env(fresh_pg), workers=2) as server:
            base = server.base
            workers = sorted(server.worker_pids())
            deadline = time.monotonic() + MIXED_LOAD_SECONDS
            async with http_client() as http:
                await fund(http, base, headers, writes)

                async def until_answered(write: Write) -> None:
                    # A client retries a write until it has an answer, pausing between tries.
                    for _ in range(MAX_ATTEMPTS):
                        if write.final is not None:
                            return
                        await post(http, base, headers, write)
                        if write.final is None:
                            await asyncio.sleep(RETRY_PAUSE)

                async def writer(*, keyed: bool) -> None:
                    while time.monotonic() < deadline:
                        await until_answered(next_write(keyed=keyed))

                async def impatient_writer() -> None:
                    nonlocal writes_given_up
                    while time.monotonic() < deadline:
                        write = next_write(keyed=False)
                        timeout = rng.uniform(0.002, 0.05)
                        if await post(http, base, headers, write, timeout=timeout) is None:
                            writes_given_up += 1
                        await until_answered(write)

                async def reader(*, patient: bool) -> None:
                    nonlocal reads_given_up
                    while time.monotonic() < deadline:
                        path = f"/reward-points/customer/{rng.choice(customers)}"
                        path += rng.choice(["", "", "/summary"])
                        timeout = CLIENT_TIMEOUT if patient else rng.uniform(0.002, 0.05)
                        try:
                            response = await http.get(
                                f"{base}{path}", headers=headers, timeout=timeout
                            )
                        except httpx.TransportError:
                            assert not patient, f"no answer to {path}"
                            reads_given_up += 1
                            continue
                        reads.append(
                            Answer(
                                response.status_code,
                                response.content,
                                False,
                                response.headers.get("retry-after"),
                                0.0,
                            )
                        )

                async def terminate_repeatedly() -> None:
                    while time.monotonic() < deadline - TERMINATE_EVERY_SECONDS:
                        await asyncio.sleep(TERMINATE_EVERY_SECONDS)
                        # Materialised first, so nothing but the service's own connections to
                        # this test's database is ever terminated.
                        rows = await admin.fetch(
                            "WITH targets AS MATERIALIZED (SELECT pid FROM pg_stat_activity "
                            "WHERE datname = $1 AND application_name = 'rewardpoints') "
                            "SELECT pid FROM targets WHERE pg_terminate_backend(pid)",
                            database,
                        )
                        terminated.extend(row["pid"] for row in rows)

                await asyncio.gather(
                    terminate_repeatedly(),
                    *(writer(keyed=True) for _ in range(6)),
                    *(writer(keyed=False) for _ in range(6)),
                    *(impatient_writer() for _ in range(3)),
                    *(reader(patient=True) for _ in range(4)),
                    *(reader(patient=False) for _ in range(2)),
                )
                await settle(http, base, headers, writes)

                assert terminated, "no connection was terminated: the test proved nothing"
                assert writes_given_up and reads_given_up, "no client went away mid-request"
                unavailable = [a for w in writes for a in w.answers if a.status == 503]
                unavailable += [a for a in reads if a.status == 503]
                assert unavailable, "no request saw a terminated connection"
                statuses = sorted({a.status for a in reads})
                assert set(statuses) <= {200, 503}, statuses
                for answer in reads:
                    if answer.status == 503:
                        assert_service_unavailable(answer)
                assert_answers_are_allowed(writes)
                # Only the impatient clients went without an answer: the service never did.
                assert sum(write.transport_errors for write in writes) == writes_given_up
                await check_replays(http, base, headers, [w for w in writes if w.keyed])
                await check_ledger(http, base, headers, writes)
            assert sorted(server.worker_pids()) == workers, "a worker was restarted"
    finally:
        await admin.close()
    answers = [a.status for w in writes for a in w.answers] + [a.status for a in reads]
    print(
        f"\n[pg_terminate_backend x{len(terminated)}, mixed load] {len(writes)} writes, "
        f"{len(reads)} reads answered, {writes_given_up + reads_given_up} given up by the "
        f"client, statuses "
        f"{dict(sorted(collections.Counter(answers).items()))}; "
        f"{time.monotonic() - started:.1f} s"
    )


async def test_postgres_crashed_and_restarted_under_load_answers_503_and_recovers_by_itself(
    throwaway_pg: Throwaway, headers: Headers
) -> None:
    started = time.monotonic()
    customers = [f"c{index}" for index in range(8)]
    funded, pool = funding(customers), burst(customers, 1000, seed=4)
    with server_process(server_env(throwaway_pg.url), workers=2) as server:
        workers = sorted(server.worker_pids())
        async with http_client() as http:
            await fund(http, server.base, headers, funded)

        async def restart_twice(reached: Callable[[int], Awaitable[None]]) -> None:
            for at in (20, 80):
                await reached(at)
                await asyncio.to_thread(restart_throwaway_postgres, throwaway_pg.data_directory)

        run = await run_under_fault(server, headers, funded, pool, restart_twice)
        assert_recovered(run)
        assert sorted(server.worker_pids()) == workers, "a worker was restarted"
    outcome("pg_ctl restart -m immediate x2", run.writes, started)


# ---- 3. one customer's lock held -----------------------------------------------------------


async def timed_get(http: httpx.AsyncClient, url: str, headers: Headers) -> tuple[int, float]:
    started = time.monotonic()
    response = await http.get(url, headers=headers)
    return response.status_code, time.monotonic() - started


async def check_lock_held(
    http: httpx.AsyncClient,
    base: str,
    headers: Headers,
    blocked: list[Write],
    free: list[Write],
    lock_timeout: float,
) -> None:
    """While the lock is held: the blocked writes answer 503 after about the lock timeout,
    never hang; the free writes and all reads are served."""
    reads = [
        timed_get(http, f"{base}/reward-points/customer/{write.customer}/summary", headers)
        for write in blocked + free
    ]
    _, read_results = await asyncio.gather(
        send_all(http, base, headers, blocked + free), asyncio.gather(*reads)
    )
    hung = [write.key for write in blocked + free if write.transport_errors]
    assert not hung, f"no answer within {CLIENT_TIMEOUT} s: {hung}"
    for write in blocked:
        (answer,) = write.answers
        assert_service_unavailable(answer)
        # It waited for the lock (not a failure for another reason), and not for ever.
        assert lock_timeout * 0.9 <= answer.elapsed < CLIENT_TIMEOUT, answer
    for write in free:
        (answer,) = write.answers
        assert answer.status in (201, 400), (write.key, answer)
    assert [status for status, _ in read_results] == [200] * len(read_results)
    # Served without waiting for the held lock: answered before its timeout could strike.
    served = [w.answers[0].elapsed for w in free] + [elapsed for _, elapsed in read_results]
    print(f"\n[lock held] slowest of the others: {max(served):.2f} s")
    assert max(served) < lock_timeout, served


async def test_a_locked_customer_answers_503_after_the_lock_timeout_while_others_are_served(
    fresh_pg: str, headers: Headers, tenant: str
) -> None:
    started = time.monotonic()
    writes = funding(["x", "a", "b", "c"])
    blocked = [
        make_write("x", action, points, f"x{index}", body_id=index % 2 == 0)
        for index, (action, points) in enumerate(
            [("addPoints", 5), ("redeemPoints", 10), ("addPoints", 7), ("redeemPoints", 3)] * 3
        )
    ]
    free = [
        make_write(customer, action, 4, f"{customer}{action}", body_id=False)
        for customer in ("a", "b", "c")
        for action in ("addPoints", "redeemPoints")
    ]
    with server_process(server_env(fresh_pg, lock_timeout_ms=2000), workers=2) as server:
        async with http_client() as http:
            await fund(http, server.base, headers, writes)
            holder = await pg_connect(fresh_pg)
            try:
                async with holder.transaction():
                    # The stand-in for a stopped worker in the middle of a write for x.
                    await holder.execute(
                        "SELECT 1 FROM accounts WHERE tenant = $1 AND customer_id = 'x' FOR UPDATE",
                        tenant,
                    )
                    await check_lock_held(http, server.base, headers, blocked, free, 2.0)
            finally:
                await holder.close()
            writes += blocked + free
            # A 503 is not an answer to keep: the same keys now run, and write, afresh.
            await settle(http, server.base, headers, writes)
            for write in blocked:
                assert (
                    write.final and write.final.status,
                    write.final and write.final.replayed,
                ) == (201, False)
            assert_answers_are_allowed(writes)
            await check_replays(http, server.base, headers, writes)
            await check_ledger(http, server.base, headers, writes)
    outcome("row lock held by another transaction", writes, started)


async def test_a_stopped_worker_holding_a_customers_lock_delays_only_that_customer(
    fresh_pg: str, headers: Headers, tenant: str
) -> None:
    started = time.monotonic()
    database = make_url(fresh_pg).database
    writes = funding(["x", "a", "b"])
    held = make_write("x", "addPoints", 11, "held", body_id=False)
    blocked = [
        make_write("x", "addPoints", 5, "x-add", body_id=True),
        make_write("x", "redeemPoints", 20, "x-redeem", body_id=False),
    ]
    free = [
        make_write(customer, action, 4, f"{customer}{action}", body_id=False)
        for customer in ("a", "b")
        for action in ("addPoints", "redeemPoints")
    ]
    with server_process(server_env(fresh_pg, lock_timeout_ms=1500), workers=2) as server:
        async with http_client() as http:
            await fund(http, server.base, headers, writes)
            holder = await pg_connect(fresh_pg)
            watcher = await pg_connect(fresh_pg)
            stopped: int | None = None
            try:
                transaction = holder.transaction()
                await transaction.start()
                await holder.execute(
                    "SELECT 1 FROM accounts WHERE tenant = $1 AND customer_id = 'x' FOR UPDATE",
                    tenant,
                )
                # A write for x goes to some worker and waits for the lock ...
                held_request = asyncio.create_task(post(http, server.base, headers, held))
                # (well within the lock timeout, so it still waits when it is stopped)
                waiting = await eventually(
                    lambda: watcher.fetchrow(
                        "SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1 "
                        "AND application_name = 'rewardpoints' AND wait_event_type = 'Lock'",
                        database,
                    ),
                    "the write for x to wait for the lock",
                    timeout=1.0,
                )
                # ... that worker is stopped, and then gets the lock it was waiting for.
                stopped = socket_owner(waiting["client_port"], server.worker_pids())
                assert stopped is not None
                os.kill(stopped, signal.SIGSTOP)
                await transaction.commit()
                state = await eventually(
                    lambda: watcher.fetchval(
                        "SELECT state FROM pg_stat_activity WHERE pid = $1 AND state <> 'active'",
                        waiting["pid"],
                    ),
                    "the stopped worker's transaction to take the lock",
                )
                # Not "idle in transaction (aborted)": the lock wait had not timed out.
                assert state == "idle in transaction", "the stopped worker did not take the lock"

                await check_lock_held(http, server.base, headers, blocked, free, 1.5)
            finally:
                if stopped is not None:
                    os.kill(stopped, signal.SIGCONT)
                await holder.close()
                await watcher.close()
            # Let go, the stopped worker finishes its write for x.
            await held_request
            writes += [held, *blocked, *free]
            await settle(http, server.base, headers, writes)
            assert held.final is not None and held.final.status == 201
            for write in blocked:
                assert (
                    write.final and write.final.status,
                    write.final and write.final.replayed,
                ) == (201, False)
            assert_answers_are_allowed(writes)
            await check_replays(http, server.base, headers, writes)
            await check_ledger(http, server.base, headers, writes)
    outcome("worker stopped holding a lock", writes, started)


async def test_a_request_that_gets_no_database_connection_in_time_answers_503(
    fresh_pg: str, headers: Headers, tenant: str
) -> None:
    """Requests for a locked customer each hold a pooled connection while they wait; when
    they hold them all, everyone else waits for a connection, and after the pool's timeout
    (10 s) answers 503 with Retry-After, never 500."""
    started = time.monotonic()
    database = make_url(fresh_pg).database
    writes = funding(["x", "y"])
    # Pool size 1: one connection and one overflow connection; both wait for x's lock.
    waiting = [make_write("x", "addPoints", 3, f"x{index}", body_id=False) for index in (1, 2)]
    starved = make_write("y", "addPoints", 5, "starved", body_id=True)
    env = server_env(fresh_pg, lock_timeout_ms=30_000, pool_size=1)
    with server_process(env) as server:
        async with http_client(timeout=30.0) as http:
            await fund(http, server.base, headers, writes)
            holder = await pg_connect(fresh_pg)
            watcher = await pg_connect(fresh_pg)
            try:
                async with holder.transaction():
                    await holder.execute(
                        "SELECT 1 FROM accounts WHERE tenant = $1 AND customer_id = 'x' FOR UPDATE",
                        tenant,
                    )
                    blocked = asyncio.create_task(send_all(http, server.base, headers, waiting))
                    await eventually(
                        lambda: watcher.fetchval(
                            "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = $1 "
                            "AND application_name = 'rewardpoints' AND wait_event_type = 'Lock'",
                            database,
                        ),
                        "both pooled connections to wait for x's lock",
                    )
                    read, _ = await asyncio.gather(
                        timed_get(http, f"{server.base}/reward-points/customer/y", headers),
                        post(http, server.base, headers, starved),
                    )
            finally:
                await holder.close()
                await watcher.close()
            await blocked
            (answer,) = starved.answers
            assert_service_unavailable(answer)
            assert read[0] == 503
            assert 9.0 <= answer.elapsed < 20.0 and 9.0 <= read[1] < 20.0
            writes += [*waiting, starved]
            await settle(http, server.base, headers, writes)
            assert [w.final and w.final.status for w in waiting] == [201, 201]
            assert starved.final is not None
            assert (starved.final.status, starved.final.replayed) == (201, False)
            assert_answers_are_allowed(writes)
            await check_replays(http, server.base, headers, writes)
            await check_ledger(http, server.base, headers, writes)
    outcome("connection pool exhausted", writes, started)
