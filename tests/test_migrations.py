"""The migrations: lots written before revision 0005 keep their points and get the right
``used_up`` flag, the ledger reads and spends them after the upgrade, and the revision can be
undone and redone; revision 0007's index is built (again, over what an interrupted build left),
undone and redone; revision 0010 moves the entries to ids per customer; revision 0012 fills the
journal from the entries written before; revision 0013 marks the lots that had expired at their
customer's last write; and a migrated database's functions are the package's sources
(src/rewardpoints/sql/)."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import rewardpoints
from rewardpoints.cli import migrations_dir
from rewardpoints.db import create_engine
from rewardpoints.documents import dumps
from rewardpoints.errors import InsufficientPoints
from rewardpoints.ledger import Ledger, NewRedemption
from rewardpoints.models import accounts, lots

from .conftest import _admin, make_settings
from .support import summary_from_tables

NOW = datetime.now(UTC).replace(microsecond=0)
_PG_INDEX_DEFINITION = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_lots_customer_open'"


def _alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = url
    return config


@pytest.fixture
def empty_url(pg_server_url: str) -> Iterator[str]:
    """A database with no schema at all."""
    server = pg_server_url
    name = f"rp_migrations_{secrets.token_hex(4)}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _engine(url: str) -> AsyncEngine:
    """The service's own engine for ``url``."""
    return create_engine(make_settings(url))


async def _seed_at_0004(url: str) -> None:
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(accounts).values(tenant="t", customer_id="c", created_at=NOW))
            for number, (points, used) in enumerate(((10, 10), (20, 5), (30, 0)), start=1):
                await conn.execute(
                    insert(lots).values(
                        tenant="t",
                        id=f"lot{number}",
                        customer_id="c",
                        description="d",
                        points=points,
                        used_points=used,
                        created_at=NOW - timedelta(minutes=10 - number),
                        valid_until=NOW + timedelta(days=365),
                        all_points_after_creation=0,
                        request_hash="h",
                    )
                )
    finally:
        await engine.dispose()


async def _used_up(url: str) -> dict[str, bool]:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, used_up FROM lots ORDER BY id"))
            return {row[0]: bool(row[1]) for row in rows}
    finally:
        await engine.dispose()


async def _has_column(url: str, column: str) -> bool:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            try:
                await conn.execute(text(f"SELECT {column} FROM lots LIMIT 1"))
            except Exception:
                return False
            return True
    finally:
        await engine.dispose()


async def _open_lots_after_downgrade(url: str) -> int:
    """Revision 0004's open-lot index is back; on PostgreSQL its functions spend the lots."""
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            definition = (await conn.execute(text(_PG_INDEX_DEFINITION))).scalar_one()
            assert "(used_points < points)" in definition
            outcome = (
                await conn.execute(
                    text(
                        "SELECT outcome, available FROM rewardpoints_redeem("
                        "'t', 'c', 'r-down', true, 'd', 5, 'h', NULL)"
                    )
                )
            ).one()
            assert tuple(outcome) == ("redeemed", 20)
            await conn.execute(text("DELETE FROM lot_usages WHERE redemption_id = 'r-down'"))
            await conn.execute(text("DELETE FROM redemptions WHERE id = 'r-down'"))
            await conn.execute(
                text("UPDATE lots SET used_points = used_points - 5 WHERE id = 'lot3'")
            )
            open_points = await conn.execute(
                text("SELECT SUM(points - used_points) FROM lots WHERE used_points < points")
            )
            return int(open_points.scalar_one())
    finally:
        await engine.dispose()


async def _spend(url: str, points: int) -> int:
    """Redeem ``points`` through the ledger and return the balance left."""
    ledger = Ledger(_engine(url), make_settings(url).sites())
    try:
        await ledger.redeem_points("t", "c", NewRedemption(points=points))
        return await ledger.balance("t", "c")
    finally:
        await ledger.engine.dispose()


def test_revision_0005_keeps_the_lots_flags_the_spent_ones_and_can_be_undone(
    empty_url: str,
) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0004")
    asyncio.run(_seed_at_0004(empty_url))

    command.upgrade(config, "head")
    assert asyncio.run(_used_up(empty_url)) == {"lot1": True, "lot2": False, "lot3": False}
    # 15 + 30 open; spending 20 finishes lot2 (FIFO) and the flag follows.
    assert asyncio.run(_spend(empty_url, 20)) == 25
    assert asyncio.run(_used_up(empty_url)) == {"lot1": True, "lot2": True, "lot3": False}
    with pytest.raises(InsufficientPoints):
        asyncio.run(_spend(empty_url, 26))

    command.downgrade(config, "0004")
    assert not asyncio.run(_has_column(empty_url, "used_up"))
    assert asyncio.run(_open_lots_after_downgrade(empty_url)) == 25

    command.upgrade(config, "head")
    assert asyncio.run(_used_up(empty_url)) == {"lot1": True, "lot2": True, "lot3": False}
    assert asyncio.run(_spend(empty_url, 25)) == 0
    assert asyncio.run(_used_up(empty_url)) == {"lot1": True, "lot2": True, "lot3": True}


_ORDER_INDEX = "ix_lot_usages_lot_order"


async def _order_index(url: str) -> str | None:
    """The definition of the index of each lot's usages in usedWith order, if there is one (on
    PostgreSQL only a valid one counts)."""
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            query = (
                "SELECT indexdef FROM pg_indexes i JOIN pg_class c ON c.relname = i.indexname"
                " JOIN pg_index x ON x.indexrelid = c.oid"
                " WHERE i.indexname = :name AND x.indisvalid"
            )
            found = (await conn.execute(text(query), {"name": _ORDER_INDEX})).scalar_one_or_none()
            return None if found is None else str(found)
    finally:
        await engine.dispose()


async def _execute(url: str, statement: str) -> None:
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def test_revision_0007_indexes_each_lots_usages_in_used_with_order_and_can_be_undone(
    empty_url: str,
) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0006")
    assert asyncio.run(_order_index(empty_url)) is None
    # What an interrupted concurrent build leaves behind (here: a wrong one) is rebuilt.
    asyncio.run(_execute(empty_url, f"CREATE INDEX {_ORDER_INDEX} ON lot_usages (tenant)"))

    command.upgrade(config, "0007")
    definition = asyncio.run(_order_index(empty_url))
    assert definition is not None
    assert "(tenant, lot_id, created_at, redemption_id)" in definition

    command.downgrade(config, "0006")
    assert asyncio.run(_order_index(empty_url)) is None
    command.upgrade(config, "head")
    definition = asyncio.run(_order_index(empty_url))
    assert definition is not None
    assert "(tenant, customer_id, lot_id, created_at, redemption_id)" in definition


async def _stored_items(url: str) -> dict[str, str | None]:
    """Each lot's stored summary item, and (as ``expected:<id>``) its item as the tests'
    oracle writes it."""
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, summary_item FROM lots ORDER BY id"))
            stored: dict[str, str | None] = {row[0]: row[1] for row in rows}
            summary = await summary_from_tables(conn, "t", "c", datetime.now(UTC))
        for lot in summary["summary"]["addedPointsList"]:
            stored[f"expected:{lot['id']}"] = dumps(lot).decode()
        return stored
    finally:
        await engine.dispose()


def test_revision_0008_stores_the_used_up_lots_items_and_can_be_undone(empty_url: str) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0007")
    asyncio.run(_seed_at_0004(empty_url))  # lot1 10 of 10 used, lot2 5 of 20, lot3 0 of 30

    command.upgrade(config, "head")
    items = asyncio.run(_stored_items(empty_url))
    assert items["lot1"] == items["expected:lot1"]
    assert items["lot2"] is None and items["lot3"] is None
    assert '"usedPoints":10,' in items["expected:lot1"]  # type: ignore[operator]

    # Spending 15 finishes lot2 (FIFO): the redemption stores its item, usedWith and all.
    assert asyncio.run(_spend(empty_url, 15)) == 30
    items = asyncio.run(_stored_items(empty_url))
    assert items["lot2"] == items["expected:lot2"]
    assert '"usedPoints":20,' in items["expected:lot2"]  # type: ignore[operator]
    assert items["lot3"] is None

    command.downgrade(config, "0007")
    assert not asyncio.run(_has_column(empty_url, "summary_item"))
    assert asyncio.run(_functions(empty_url)) == ["rewardpoints_add", "rewardpoints_redeem"]
    # Revision 0007's functions spend without the column.
    asyncio.run(
        _execute(
            empty_url,
            "SELECT rewardpoints_redeem('t', 'c', 'r-0007', true, 'd', 30, 'h', NULL)",
        )
    )

    command.upgrade(config, "0009")  # the fill, a few of the table's keys at a time
    for batch in (1, 2, 3):
        assert asyncio.run(_fill_again(empty_url, batch)) == 3
    command.upgrade(config, "head")
    items = asyncio.run(_stored_items(empty_url))
    for lot in ("lot1", "lot2", "lot3"):
        assert items[lot] == items[f"expected:{lot}"]
    assert '"usedPoints":30,' in items["expected:lot3"]  # type: ignore[operator]


async def _functions(url: str) -> list[str]:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT proname FROM pg_proc WHERE proname LIKE 'rewardpoints%' ORDER BY 1")
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def _fill_again(url: str, batch: int) -> int:
    """Revision 0008's fill, in batches of ``batch`` keys, after every item was set back to
    NULL; the number of items it filled."""
    path = migrations_dir() / "versions" / "2026_11_26_0008_lots_summary_item.py"
    spec = importlib.util.spec_from_file_location("rewardpoints_migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    setattr(module, "_FILL_BATCH", batch)  # noqa: B010 - a module loaded from its file
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE lots SET summary_item = NULL"))
            await conn.run_sync(module._fill)
            filled = await conn.execute(
                text("SELECT count(*) FROM lots WHERE summary_item IS NOT NULL")
            )
            return int(filled.scalar_one())
    finally:
        await engine.dispose()


# ---- revision 0010: ids per customer, and the functions' one source --------------------------

SOURCES = Path(rewardpoints.__file__).with_name("sql")


async def _function_definitions(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(
        text(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' AND p.proname LIKE 'rewardpoints%'"
        )
    )
    return {row[0]: row[1] for row in rows}


async def _installed_and_sources(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The functions of the database at ``url``, and the same after the package's sources
    were run over them (in a transaction rolled back after)."""
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            installed = await _function_definitions(conn)
            for source in sorted(SOURCES.glob("*.sql")):
                await conn.execute(text(source.read_text()))
            from_sources = await _function_definitions(conn)
            await conn.rollback()
        return installed, from_sources
    finally:
        await engine.dispose()


def test_a_migrated_database_runs_the_functions_of_the_package_sources(pg_url: str) -> None:
    """A rule changes in one file plus one migration: this fails when the newest migration
    installs other functions than src/rewardpoints/sql/ holds, or the files add one."""
    installed, from_sources = asyncio.run(_installed_and_sources(pg_url))
    names = sorted(path.stem for path in SOURCES.glob("*.sql"))
    assert sorted({signature.split("(")[0] for signature in installed}) == names
    assert installed == from_sources


async def _seed_at_0009(url: str) -> None:
    """Customer c with lots l1 (spent by r1) and l2, a coupon for r1; customer d with lot d1."""
    statements = [
        "INSERT INTO accounts (tenant, customer_id, created_at) VALUES ('t', 'c', now()),"
        " ('t', 'd', now())",
        "SELECT rewardpoints_add('t', 'c', 'l1', true, NULL, 'x', 10, NULL, 36, 'h1', NULL)",
        "SELECT rewardpoints_add('t', 'c', 'l2', true, NULL, 'x', 10, NULL, 36, 'h2', NULL)",
        "SELECT rewardpoints_add('t', 'd', 'd1', true, NULL, 'x', 7, NULL, 36, 'h3', NULL)",
        "SELECT rewardpoints_redeem('t', 'c', 'r1', true, 'y', 10, 'h4', NULL)",
        "INSERT INTO coupons (tenant, code, customer_id, redemption_id, redeem_option_id,"
        " site_code, body, created_at) VALUES ('t', 'RP1', 'c', 'r1', 'o', 'main', '{}', now())",
    ]
    for statement in statements:
        await _execute(url, statement)


async def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(query))]
    finally:
        await engine.dispose()


def test_revision_0010_keys_entries_by_customer_and_can_be_undone(empty_url: str) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0009")
    asyncio.run(_seed_at_0009(empty_url))

    command.upgrade(config, "head")
    usages = asyncio.run(
        _rows(empty_url, "SELECT customer_id, lot_id, redemption_id FROM lot_usages")
    )
    assert usages == [("c", "l1", "r1")]
    # The same id on another customer is now an entry of its own; the coupon stays its
    # redemption's and goes with it.
    assert asyncio.run(_spend(empty_url, 5)) == 5
    ledger_ids = "SELECT customer_id, id FROM lots ORDER BY customer_id, id"
    before = asyncio.run(_rows(empty_url, ledger_ids))
    asyncio.run(
        _execute(
            empty_url,
            "SELECT rewardpoints_add('t', 'd', 'l1', true, NULL, 'x', 3, NULL, 36, 'h5', NULL,"
            " NULL)",
        )
    )
    assert asyncio.run(_rows(empty_url, ledger_ids)) == sorted([*before, ("d", "l1")])
    with pytest.raises(Exception, match="shared by two customers"):
        command.downgrade(config, "0009")

    asyncio.run(_execute(empty_url, "DELETE FROM lots WHERE customer_id = 'd' AND id = 'l1'"))
    command.downgrade(config, "0009")
    kept = "SELECT lot_id FROM lot_usages WHERE redemption_id = 'r1'"
    assert asyncio.run(_rows(empty_url, kept)) == [("l1",)]
    command.upgrade(config, "head")
    asyncio.run(_execute(empty_url, "DELETE FROM redemptions WHERE id = 'r1'"))
    assert asyncio.run(_rows(empty_url, "SELECT code FROM coupons")) == []


# ---- revision 0012: the journal --------------------------------------------------------------


async def _seed_at_0011(url: str) -> None:
    """Customer c: lots l1 and l2, redemption r1 of 15, a chargeback lot; customer d: lot d1."""
    chargeback = "Chargeback - redeemed voucher could not be created."
    statements = [
        "SELECT set_config('rewardpoints.now', '2031-01-01T00:00:00+00', false)",
        "SELECT rewardpoints_add('t', 'c', 'l1', true, 'o-1', 'x', 10, NULL, 36, 'h1')",
        "SELECT rewardpoints_add('t', 'c', 'l2', true, NULL, 'x', 10, NULL, 36, 'h2')",
        "SELECT rewardpoints_redeem('t', 'c', 'r1', true, 'y', 15, 'h3')",
        f"SELECT rewardpoints_charge_back('t', 'c', 'cb', '{chargeback}', 4, 36, 'h4')",
        "SELECT rewardpoints_add('t', 'd', 'd1', true, NULL, 'x', 7, NULL, 36, 'h5')",
    ]
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def test_revision_0012_fills_the_journal_from_the_entries_and_can_be_undone(
    empty_url: str,
) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0011")
    asyncio.run(_seed_at_0011(empty_url))

    command.upgrade(config, "head")
    journal = (
        "SELECT customer_id, kind, entry_id, points, balance_after, reference_id, actor"
        " FROM journal ORDER BY customer_id, created_at, seq"
    )
    assert asyncio.run(_rows(empty_url, journal)) == [
        ("c", "added", "l1", 10, 10, "o-1", None),
        ("c", "added", "l2", 10, 20, None, None),
        ("c", "redeemed", "r1", 15, 5, None, None),
        ("c", "chargeback", "cb", 4, 9, None, None),
        ("d", "added", "d1", 7, 7, None, None),
    ]
    # The ledger writes on after the upgrade, each write with its journal entry.
    assert asyncio.run(_spend(empty_url, 2)) == 7
    assert asyncio.run(_rows(empty_url, "SELECT count(*) FROM journal")) == [(6,)]

    asyncio.run(
        _execute(
            empty_url,
            "SELECT * FROM rewardpoints_reverse('t', 'c', 'v1', true, 'r1', 1, NULL, NULL, 'h6',"
            " false)",
        )
    )
    with pytest.raises(Exception, match="revision 0011 cannot hold them"):
        command.downgrade(config, "0011")
    asyncio.run(_execute(empty_url, "DELETE FROM reversals"))
    command.downgrade(config, "0011")
    # Revision 0011's functions are back and write without a journal.
    asyncio.run(
        _execute(empty_url, "SELECT rewardpoints_redeem('t', 'c', 'r2', true, 'y', 1, 'h7')")
    )
    assert asyncio.run(_rows(empty_url, "SELECT to_regclass('journal')")) == [(None,)]
    command.upgrade(config, "head")
    # Filled again from the four lots and the three redemptions.
    assert asyncio.run(_rows(empty_url, "SELECT count(*) FROM journal"))[0][0] == 7


# ---- revision 0013: the lots expired by their customer's last write are marked ------------


async def _run(url: str, *statements: str) -> list[tuple[Any, ...]]:
    """The statements in one transaction; the rows of the last."""
    engine = _engine(url)
    try:
        async with engine.begin() as conn:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                result = await conn.execute(text(statement))
                rows = [tuple(row) for row in result] if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


def _at(hours: int) -> str:
    return f"SELECT set_config('rewardpoints.now', '2031-01-01T{hours:02d}:00:00+00', false)"


_FLAGS = "SELECT id, expired FROM lots ORDER BY id"
_OPEN_INDEX = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_lots_customer_open'"


def test_revision_0013_marks_the_lots_expired_at_the_last_write_and_can_be_undone(
    empty_url: str,
) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0012")
    asyncio.run(
        _run(
            empty_url,
            _at(0),
            "SELECT rewardpoints_add('t', 'c', 'e1', true, NULL, 'x', 10,"
            " '2031-01-01T01:00:00+00', 36, 'h1', NULL, NULL)",
            "SELECT rewardpoints_add('t', 'c', 'e2', true, NULL, 'x', 10,"
            " '2031-01-01T03:00:00+00', 36, 'h2', NULL, NULL)",
            "SELECT rewardpoints_add('t', 'c', 'o1', true, NULL, 'x', 20, NULL, 36, 'h3', NULL,"
            " NULL)",
            "SELECT rewardpoints_redeem('t', 'c', 'r1', true, 'y', 3, 'h4', NULL, NULL)",
            _at(2),  # e1 expires before this write, with 7 points left; e2 after it
            "SELECT rewardpoints_add('t', 'c', 'o2', true, NULL, 'x', 1, NULL, 36, 'h5', NULL,"
            " NULL)",
        )
    )

    command.upgrade(config, "head")
    assert asyncio.run(_rows(empty_url, _FLAGS)) == [
        ("e1", True),
        ("e2", False),
        ("o1", False),
        ("o2", False),
    ]
    assert "NOT expired" in asyncio.run(_rows(empty_url, _OPEN_INDEX))[0][0]
    # The next write, after e2's validUntil, takes e2's points off and marks it; it draws
    # from o1, the oldest lot still valid.
    redeemed = asyncio.run(
        _run(
            empty_url,
            _at(4),
            "SELECT outcome, available FROM rewardpoints_redeem('t', 'c', 'r2', true, 'y', 5,"
            " 'h6', NULL, NULL)",
        )
    )
    assert redeemed == [("redeemed", 16)]
    assert asyncio.run(_rows(empty_url, _FLAGS))[1] == ("e2", True)
    assert asyncio.run(
        _rows(empty_url, "SELECT lot_id FROM lot_usages WHERE redemption_id = 'r2'")
    ) == [("o1",)]

    command.downgrade(config, "0012")
    assert not asyncio.run(_has_column(empty_url, "expired"))
    assert "expired" not in asyncio.run(_rows(empty_url, _OPEN_INDEX))[0][0]
    # Revision 0012's functions sum the lots again.
    redeemed = asyncio.run(
        _run(
            empty_url,
            _at(5),
            "SELECT outcome, available FROM rewardpoints_redeem('t', 'c', 'r3', true, 'y', 1,"
            " 'h7', NULL, NULL)",
        )
    )
    assert redeemed == [("redeemed", 15)]
    command.upgrade(config, "head")
    assert asyncio.run(_rows(empty_url, _FLAGS)) == [
        ("e1", True),
        ("e2", True),
        ("o1", False),
        ("o2", False),
    ]
