"""``rewardpoints export`` and ``rewardpoints import`` as an operator runs them, in child
processes on the test's database: the round trip is byte-identical, an import is idempotent and
resumable, bad records are refused one by one, and the input is read as a stream."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from rewardpoints.progress import Progress

from .conftest import token
from .support import FakeClock, connect, load_long_history
from .test_cli import COMMAND, clean_env, query

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=400)


@pytest.fixture
def clock() -> FakeClock:
    """Entries written 400 days ago onwards, so that lots with a short validity have expired
    by the real clock that the commands read."""
    return FakeClock(start=START)


def cli(
    args: list[str], database_url: str, home: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = clean_env(home, REWARDPOINTS_DATABASE_URL=database_url)
    return subprocess.run(
        [str(COMMAND), *args],
        env=env,
        cwd=home,
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def export(database_url: str, home: Path, tenant: str, *extra: str) -> bytes:
    done = cli(["export", "--tenant", tenant, *extra], database_url, home)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def import_(
    database_url: str, home: Path, tenant: str, source: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return cli(["import", "--tenant", tenant, source], database_url, home, stdin)


def other_tenant() -> str:
    return "t" + os.urandom(5).hex()


async def build_tenant(client: httpx.AsyncClient, tenant: str, clock: FakeClock, url: str) -> None:
    """Customers with what a real tenant holds: partly and wholly spent lots, redemptions over
    several lots, expired lots, a chargeback lot, no entries at all, text that JSON escapes,
    and a history long enough to be written in pieces."""
    headers = {"Authorization": f"Bearer {token(tenant)}"}
    base = "/reward-points/customer"

    async def add(customer: str, points: int, **body: Any) -> None:
        answer = await client.post(
            f"{base}/{customer}/addPoints", json={"points": points, **body}, headers=headers
        )
        assert answer.status_code == 201, answer.text

    async def redeem(customer: str, points: int, **body: Any) -> None:
        answer = await client.post(
            f"{base}/{customer}/redeemPoints", json={"points": points, **body}, headers=headers
        )
        assert answer.status_code == 201, answer.text

    soon = (START + timedelta(days=30)).isoformat()
    await add("alice", 100, id="a1", **{"reference-id": "order 1"}, description='"quoted" ü\n')
    await add("alice", 50, validUntil=soon)
    await add("alice", 70)
    await redeem("alice", 120, id="r1", description="a coupon")
    await redeem("alice", 20)
    clock.advance(days=60)  # alice's second lot expires with points left
    await add("alice", 5, id="late")
    await redeem("alice", 25)
    for n in range(30):
        await add("bob", n + 1, description=f"order line {n}")
    await redeem("bob", 300)
    created = await client.post(f"{base}/carol", headers=headers)
    assert created.status_code == 200, created.text
    await add("dave-ü", 10, id="ü-1")
    # Emporix's refund of a redemption whose coupon could not be made is a lot like this.
    await add("erin", 40, id="e1")
    await redeem("erin", 30, id="e-r1")
    await add(
        "erin", 30, id="cb", description="Chargeback - redeemed voucher could not be created."
    )
    # 600 lots, half spent by 30 redemptions: longer than one piece of an export (64 KB).
    await load_long_history(url, tenant, lots=600, used=300)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize("form", ["json", "ndjson"])
async def test_export_then_import_into_an_empty_tenant_then_export_is_byte_identical(
    client: httpx.AsyncClient,
    tenant: str,
    clock: FakeClock,
    database_url: str,
    home: Path,
    form: str,
) -> None:
    await build_tenant(client, tenant, clock, database_url)
    source = export(database_url, home, tenant, "--format", form)
    documents = (
        json.loads(source)
        if form == "json"
        else [json.loads(line) for line in source.decode().splitlines()]
    )
    assert [d["customerId"] for d in documents] == [
        "alice",
        "bob",
        "carol",
        "dave-ü",
        "erin",
        "long",
    ]
    assert sum(len(d["summary"]["addedPointsList"]) for d in documents) == 3 + 1 + 30 + 1 + 2 + 600
    if form == "ndjson":
        assert source.endswith(b"\n") and source.count(b"\n") == 6

    target = other_tenant()
    (home / "in").write_bytes(source)
    done = import_(database_url, home, target, str(home / "in"))
    assert done.returncode == 0, done.stderr.decode()
    assert "imported 6 customers" in done.stderr.decode()
    assert export(database_url, home, target, "--format", form) == source

    # Through the API, balances and summaries are the source's too.
    for document in documents:
        path = f"/reward-points/customer/{quote(document['customerId'], safe='')}"
        for suffix in ("", "/summary"):
            answers = [
                await client.get(path + suffix, headers={"Authorization": f"Bearer {token(who)}"})
                for who in (tenant, target)
            ]
            assert [a.status_code for a in answers] == [200, 200]
            assert answers[0].content == answers[1].content


async def test_the_json_export_is_the_summary_batch_answer(
    client: httpx.AsyncClient, tenant: str, clock: FakeClock, database_url: str, home: Path
) -> None:
    await build_tenant(client, tenant, clock, database_url)
    clock.now = datetime.now(UTC)  # the service's clock where the command's is
    clock.step = timedelta(0)
    written = export(database_url, home, tenant)
    answer = await client.get(
        "/reward-points/summaryBatch", headers={"Authorization": f"Bearer {token(tenant)}"}
    )
    assert answer.status_code == 200
    assert written == answer.content


async def test_an_imported_ledger_goes_on_as_the_source_would(
    client: httpx.AsyncClient, tenant: str, clock: FakeClock, database_url: str, home: Path
) -> None:
    """The imported lots are spent oldest first, usedWith grows as it would have, and an id
    sent again is the same entry (409 with other content)."""
    await build_tenant(client, tenant, clock, database_url)
    target = other_tenant()
    (home / "in").write_bytes(export(database_url, home, tenant))
    assert import_(database_url, home, target, str(home / "in")).returncode == 0
    clock.now = datetime.now(UTC)
    clock.step = timedelta(0)  # both tenants' new entries at the same moment
    for who in (tenant, target):
        headers = {"Authorization": f"Bearer {token(who)}"}
        answer = await client.post(
            "/reward-points/customer/bob/redeemPoints",
            json={"points": 100, "id": "again"},
            headers=headers,
        )
        assert answer.status_code == 201, answer.text
        conflict = await client.post(
            "/reward-points/customer/alice/addPoints",
            json={"points": 1, "id": "a1"},
            headers=headers,
        )
        assert conflict.status_code == 409, conflict.text
    # The history reads the same, but for who wrote the entries: the import, in the copy.
    histories = []
    for who in (tenant, target):
        answer = await client.get(
            "/reward-points/customer/alice/history",
            params={"limit": 50},
            headers={"Authorization": f"Bearer {token(who)}"},
        )
        assert answer.status_code == 200, answer.text
        histories.append(answer.json()["items"])
    assert {item["actor"] for item in histories[1]} == {"import", None}  # None: "expired"
    for item in (*histories[0], *histories[1]):
        item.pop("actor")
    assert histories[0] == histories[1]
    assert [i["kind"] for i in histories[1]].count("added") == 4
    summaries = []
    for who in (tenant, target):
        answer = await client.get(
            "/reward-points/customer/bob/summary",
            headers={"Authorization": f"Bearer {token(who)}"},
        )
        summaries.append(answer.json())
    assert summaries[0] == summaries[1]
    lots = summaries[1]["summary"]["addedPointsList"]
    assert [lot["usedPoints"] for lot in lots[:26]] == [n + 1 for n in range(26)]
    assert "again" in lots[24]["usedWith"] and "again" not in lots[23]["usedWith"]


async def test_importing_again_adds_nothing(
    client: httpx.AsyncClient, tenant: str, clock: FakeClock, database_url: str, home: Path
) -> None:
    await build_tenant(client, tenant, clock, database_url)
    source = export(database_url, home, tenant, "--format", "ndjson")
    target = other_tenant()
    first = import_(database_url, home, target, "-", stdin=source)
    assert first.returncode == 0, first.stderr.decode()
    again = import_(database_url, home, target, "-", stdin=source)
    assert again.returncode == 0, again.stderr.decode()
    assert "imported 0 customers" in again.stderr.decode()
    assert "6 already present" in again.stderr.decode()
    assert export(database_url, home, target, "--format", "ndjson") == source
    conn = await connect(database_url)
    try:
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM lots WHERE tenant = $1),"
            " (SELECT count(*) FROM redemptions WHERE tenant = $1)",
            target,
        )
    finally:
        await conn.close()
    assert tuple(counts) == (637, 35)


def generated(customers: int, lots: int) -> Iterator[bytes]:
    """An Emporix summaryBatch answer, one document at a time: ``lots`` lots per customer, the
    first half spent by one redemption each."""
    yield b"["
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for c in range(customers):
        added = []
        redeemed = []
        for n in range(lots):
            created = start + timedelta(seconds=n)
            used = n < lots // 2
            added.append(
                {
                    "id": f"c{c}-l{n}",
                    "reference-id": None,
                    "description": "Bonuspunkte für Bestellung",
                    "points": 10,
                    "createdAt": created.isoformat(timespec="milliseconds"),
                    "allPointsAfterCreation": 10 * (n + 1),
                    "usedPoints": 10 if used else 0,
                    "validUntil": "2099-01-01T00:00:00.000+00:00",
                    "usedWith": [f"c{c}-r{n}"] if used else [],
                }
            )
            if used:
                redeemed.append(
                    {
                        "id": f"c{c}-r{n}",
                        "description": "coupon",
                        "points": 10,
                        "createdAt": (created + timedelta(milliseconds=500)).isoformat(
                            timespec="milliseconds"
                        ),
                        "allPointsAfterCreation": 0,
                    }
                )
        document = {
            "customerId": f"customer-{c:06}",
            "activePoints": 10 * (lots - lots // 2),
            "summary": {"addedPointsList": added, "redeemedPointsList": redeemed},
        }
        yield (b"," if c else b"") + json.dumps(document).encode()
    yield b"]"


def test_an_interrupted_import_resumes_without_loading_anything_twice(
    database_url: str, home: Path, tenant: str
) -> None:
    source = b"".join(generated(customers=3000, lots=10))
    env = clean_env(home, REWARDPOINTS_DATABASE_URL=database_url)
    child = subprocess.Popen(
        [str(COMMAND), "import", "--tenant", tenant, "-"],
        env=env,
        cwd=home,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    child.stdin.write(source[: len(source) * 2 // 3])  # the rest is not sent yet
    child.stdin.flush()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        loaded = query(database_url, "SELECT count(*) FROM accounts WHERE tenant = $1", tenant)
        if loaded[0][0] > 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("nothing was loaded")
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr.decode()
    assert "run the same import again" in stderr.decode()
    kept = query(database_url, "SELECT count(*) FROM accounts WHERE tenant = $1", tenant)[0][0]
    assert 0 < kept < 3000

    resumed = import_(database_url, home, tenant, "-", stdin=source)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert f"{kept} already present" in resumed.stderr.decode()
    counts = query(
        database_url,
        "SELECT count(*), sum(points), sum(used_points) FROM lots WHERE tenant = $1",
        tenant,
    )
    assert counts == [(30000, 300000, 150000)]
    assert json.loads(export(database_url, home, tenant)) == json.loads(source)


def test_bad_records_are_refused_one_by_one_and_the_others_loaded(
    database_url: str, home: Path, tenant: str
) -> None:
    good = json.loads(b"".join(generated(customers=3, lots=4)))

    def broken(change: Any) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(json.dumps(good[0]))
        document["customerId"] = f"bad-{len(bad)}"
        change(document)
        return document

    lots = "addedPointsList"
    bad = []
    bad.append(broken(lambda d: d["summary"][lots][0].update(points=-5)))
    bad.append(broken(lambda d: d["summary"][lots][1].update(createdAt="yesterday")))
    bad.append(broken(lambda d: d["summary"][lots][0].update(usedPoints=11)))
    bad.append(broken(lambda d: d["summary"][lots][0].update(usedWith=["nobody"])))
    bad.append(broken(lambda d: d["summary"][lots][1].update(id=d["summary"][lots][0]["id"])))
    bad.append(broken(lambda d: d["summary"]["redeemedPointsList"][0].update(points=15)))
    bad.append(broken(lambda d: d.pop("customerId")))
    bad.append(["not", "a", "document"])  # type: ignore[arg-type]
    records = [good[0], *bad, good[1], good[0], good[2]]
    (home / "in").write_text(json.dumps(records))
    done = import_(database_url, home, tenant, str(home / "in"))
    assert done.returncode == 1
    lines = [line for line in done.stderr.decode().splitlines() if line.startswith("record ")]
    assert lines == [
        "record 2 (customer 'bad-0'): addedPointsList[0]: points must be a positive integer,"
        " not -5",
        "record 3 (customer 'bad-1'): addedPointsList[1]: createdAt must be an ISO 8601"
        " date-time, not 'yesterday'",
        "record 4 (customer 'bad-2'): addedPointsList[0]: usedPoints 11 is more than its points 10",
        "record 5 (customer 'bad-3'): usedWith names 'nobody', which is not a redemption here",
        "record 6 (customer 'bad-4'): addedPointsList[1]: id 'c0-l0' is used twice by this"
        " customer",
        "record 7 (customer 'bad-5'): redemption 'c0-r0' spent 15 points, but the lots that"
        " list it in usedWith account for 10",
        "record 8: customerId must be a string of 1-255 characters",
        "record 9: not a JSON object",
        "record 11 (customer 'customer-000000'): appears twice in the input",
    ]
    assert "imported 3 customers" in done.stderr.decode()
    assert "9 records refused" in done.stderr.decode()
    loaded = query(
        database_url, "SELECT customer_id FROM accounts WHERE tenant = $1 ORDER BY 1", tenant
    )
    assert loaded == [("customer-000000",), ("customer-000001",), ("customer-000002",)]
    assert json.loads(export(database_url, home, tenant)) == good


def test_emporix_published_example_imports_as_it_reads(
    database_url: str, home: Path, tenant: str
) -> None:
    """The summaryBatch example of Emporix's own spec (a lot spent by two redemptions, two
    chargeback lots) loads, and reads back the same but for activePoints, which is of now."""
    example = [
        {
            "customerId": "C0001",
            "activePoints": 1950,
            "summary": {
                "addedPointsList": [
                    {
                        "id": "1c32ce73-8765-42a7-92af-ff370a0a59d6",
                        "reference-id": "<string>",
                        "description": "<string>",
                        "points": 2000,
                        "createdAt": "2023-05-11T18:32:18.591+00:00",
                        "allPointsAfterCreation": 2000,
                        "usedPoints": 140,
                        "validUntil": "2023-11-11T12:00:50.406+00:00",
                        "usedWith": [
                            "d85c0570-1d51-4611-bf2f-c67452384626",
                            "b5085a36-a5f0-450d-a011-9f92902f3900",
                        ],
                    },
                    {
                        "id": "b9919f33-3a0b-4fd7-acdb-217edd4fc110",
                        "reference-id": None,
                        "description": "Chargeback - redeemed voucher could not be created.",
                        "points": 50,
                        "createdAt": "2023-05-11T18:32:38.564+00:00",
                        "allPointsAfterCreation": 2000,
                        "usedPoints": 0,
                        "validUntil": "2096-05-11T18:32:38.564+00:00",
                        "usedWith": [],
                    },
                ],
                "redeemedPointsList": [
                    {
                        "id": "d85c0570-1d51-4611-bf2f-c67452384626",
                        "description": "test desc",
                        "points": 50,
                        "createdAt": "2023-05-11T18:32:38.501+00:00",
                        "allPointsAfterCreation": 1950,
                    },
                    {
                        "id": "b5085a36-a5f0-450d-a011-9f92902f3900",
                        "description": "For 90 points you can have a voucher.",
                        "points": 90,
                        "createdAt": "2023-05-11T18:32:50.946+00:00",
                        "allPointsAfterCreation": 1910,
                    },
                ],
            },
        }
    ]
    (home / "in").write_text(json.dumps(example))
    done = import_(database_url, home, tenant, str(home / "in"))
    assert done.returncode == 0, done.stderr.decode()
    [document] = json.loads(export(database_url, home, tenant))
    assert document["activePoints"] == 50  # the first lot expired in 2023
    example[0]["activePoints"] = 50
    assert document == example[0]
    usages = query(
        database_url,
        "SELECT redemption_id, points FROM lot_usages WHERE tenant = $1 ORDER BY created_at",
        tenant,
    )
    assert usages == [
        ("d85c0570-1d51-4611-bf2f-c67452384626", 50),
        ("b5085a36-a5f0-450d-a011-9f92902f3900", 90),
    ]


# Runs the command and prints the peak memory (resident, KiB) of the process it started.
PEAK = (
    "import resource, subprocess, sys;"
    "done = subprocess.run(sys.argv[1:], capture_output=True);"
    "sys.stderr.buffer.write(done.stderr);"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
    "sys.exit(done.returncode)"
)


def peak_of_import(database_url: str, home: Path, tenant: str, path: Path) -> int:
    env = clean_env(home, REWARDPOINTS_DATABASE_URL=database_url)
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(COMMAND), "import", "--tenant", tenant, str(path)],
        env=env,
        cwd=home,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()
    return int(done.stdout) * 1024


def test_a_large_input_is_read_in_bounded_memory(database_url: str, home: Path) -> None:
    """An input five times larger (250,000 lots, some 85 MB) costs the importer no more
    memory: it holds two batches of documents at a time (one read while the other is loaded),
    never the input."""
    peaks = []
    sizes = []
    for customers in (1000, 5000):
        path = home / f"{customers}.json"
        with path.open("wb") as out:
            for part in generated(customers=customers, lots=50):
                out.write(part)
        sizes.append(path.stat().st_size)
        tenant = other_tenant()
        peaks.append(peak_of_import(database_url, home, tenant, path))
        loaded = query(database_url, "SELECT count(*) FROM lots WHERE tenant = $1", tenant)
        assert loaded == [(customers * 50,)]
    grown = peaks[1] - peaks[0]
    assert sizes[1] > 80_000_000
    assert grown < (sizes[1] - sizes[0]) // 10, f"peaks {peaks} for inputs of {sizes} bytes"


def test_malformed_json_stops_with_one_line_and_keeps_what_was_loaded(
    database_url: str, home: Path, tenant: str
) -> None:
    source = b"".join(generated(customers=2500, lots=2))
    done = import_(database_url, home, tenant, "-", stdin=source[:-5000] + b"}{oops")
    assert done.returncode == 1
    errors = done.stderr.decode().strip().splitlines()
    assert errors[-1].startswith("rewardpoints: the input is not valid JSON"), errors
    kept = query(database_url, "SELECT count(*) FROM accounts WHERE tenant = $1", tenant)[0][0]
    assert kept >= 2000  # the batches read before the error are loaded


def test_an_unknown_file_or_tenant_is_one_line(database_url: str, home: Path) -> None:
    missing = import_(database_url, home, "tenant", str(home / "nowhere.json"))
    assert missing.returncode == 1
    assert missing.stderr.decode().strip().endswith("nowhere.json: No such file or directory")
    bad = cli(["export", "--tenant", "Not A Tenant"], database_url, home)
    assert bad.returncode == 2
    assert bad.stderr.decode().strip() == (
        "rewardpoints: invalid tenant 'Not A Tenant' (--tenant): lowercase, 3-16 characters"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_with_rate_and_eta_on_a_terminal_and_plain_lines_elsewhere() -> None:
    terminal = Terminal()
    bar = Progress("import t", "bytes", total=1000, stream=terminal)
    bar._started -= 10  # ten seconds in
    bar.advance(250, customers=5)
    bar.advance(500, customers=5)
    bar.finish()
    shown = terminal.getvalue()
    assert shown.startswith("\r\x1b[2K") and shown.endswith("\n")
    assert "[############............]" in shown and "50.0%" in shown
    assert "10 customers" in shown and "ETA 0:10" in shown

    log = io.StringIO()
    plain = Progress("export t", "customers", total=None, stream=log)
    plain.advance(3)
    plain.finish()
    lines = log.getvalue().splitlines()
    assert lines == [lines[-1]] and "\r" not in log.getvalue()
    assert lines[0].startswith("export t  3 customers") and "ETA" not in lines[0]


def test_the_commands_draw_a_bar_on_a_terminal_and_write_plain_lines_elsewhere(
    database_url: str, home: Path, tenant: str
) -> None:
    (home / "in.json").write_bytes(b"".join(generated(customers=50, lots=2)))
    env = clean_env(home, REWARDPOINTS_DATABASE_URL=database_url)
    args = [str(COMMAND), "import", "--tenant", tenant, "--log-level", "warning", "in.json"]
    primary, secondary = pty.openpty()
    try:
        child = subprocess.run(args, env=env, cwd=home, stderr=secondary, timeout=60)
        os.close(secondary)
        shown = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the terminal's other side is closed: everything was read
                break
            if not data:
                break
            shown += data
    finally:
        os.close(primary)
    assert child.returncode == 0
    assert b"\r\x1b[2K" in shown and b"[########################]" in shown
    assert b"100.0%" in shown and b"50 customers" in shown

    piped = import_(database_url, home, other_tenant(), "in.json")
    assert piped.returncode == 0
    lines = piped.stderr.decode().splitlines()
    assert b"\r" not in piped.stderr and b"\x1b" not in piped.stderr
    assert any(line.startswith("import ") and "100.0%" in line for line in lines), lines
