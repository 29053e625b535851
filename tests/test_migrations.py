"""The migrations on both databases: lots written before revision 0005 keep their points and get
the right ``used_up`` flag, the ledger reads and spends them after the upgrade, and the
revision can be undone and redone; revision 0007's index is built (again, over what an
interrupted build left), undone and redone."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from rewardpoints.cli import migrations_dir
from rewardpoints.db import create_engine
from rewardpoints.documents import dumps, summary_json
from rewardpoints.errors import InsufficientPoints
from rewardpoints.ledger import Ledger, NewRedemption, utcnow
from rewardpoints.models import accounts, lots

from .conftest import _admin, make_settings

NOW = datetime.now(UTC).replace(microsecond=0)
_PG_INDEX_DEFINITION = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_lots_customer_open'"


def _alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = url
    return config


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    server = request.getfixturevalue("pg_server_url")
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
            if conn.dialect.name == "sqlite":
                definition = (
                    await conn.execute(
                        text("SELECT sql FROM sqlite_master WHERE name = 'ix_lots_customer_open'")
                    )
                ).scalar_one()
                assert "used_points < points" in definition
            else:
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
    ledger = Ledger(_engine(url), make_settings(url).sites(), utcnow)
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
            if conn.dialect.name == "sqlite":
                query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
            else:
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
    if empty_url.startswith("postgresql"):
        # What an interrupted concurrent build leaves behind (here: a wrong one) is rebuilt.
        asyncio.run(_execute(empty_url, f"CREATE INDEX {_ORDER_INDEX} ON lot_usages (tenant)"))

    command.upgrade(config, "head")
    definition = asyncio.run(_order_index(empty_url))
    assert definition is not None
    assert "(tenant, lot_id, created_at, redemption_id)" in definition

    command.downgrade(config, "0006")
    assert asyncio.run(_order_index(empty_url)) is None
    command.upgrade(config, "head")
    assert asyncio.run(_order_index(empty_url)) is not None


async def _stored_items(url: str) -> dict[str, str | None]:
    """Each lot's stored summary item, and (as ``expected:<id>``) its item as the ledger's
    Python code writes it."""
    ledger = Ledger(_engine(url), make_settings(url).sites(), utcnow)
    try:
        async with ledger.engine.connect() as conn:
            rows = await conn.execute(text("SELECT id, summary_item FROM lots ORDER BY id"))
            stored: dict[str, str | None] = {row[0]: row[1] for row in rows}
        listed = summary_json(await ledger.summary("t", "c"))["summary"]["addedPointsList"]
        for lot in listed:
            stored[f"expected:{lot['id']}"] = dumps(lot).decode()
        return stored
    finally:
        await ledger.engine.dispose()


def test_revision_0008_stores_the_used_up_lots_items_and_can_be_undone(empty_url: str) -> None:
    config = _alembic(empty_url)
    command.upgrade(config, "0007")
    asyncio.run(_seed_at_0004(empty_url))  # lot1 10 of 10 used, lot2 5 of 20, lot3 0 of 30
    on_pg = empty_url.startswith("postgresql")

    command.upgrade(config, "head")
    items = asyncio.run(_stored_items(empty_url))
    assert items["lot1"] == (items["expected:lot1"] if on_pg else None)
    assert items["lot2"] is None and items["lot3"] is None
    assert '"usedPoints":10,' in items["expected:lot1"]  # type: ignore[operator]

    # Spending 15 finishes lot2 (FIFO): the redemption stores its item, usedWith and all.
    assert asyncio.run(_spend(empty_url, 15)) == 30
    items = asyncio.run(_stored_items(empty_url))
    assert items["lot2"] == (items["expected:lot2"] if on_pg else None)
    assert '"usedPoints":20,' in items["expected:lot2"]  # type: ignore[operator]
    assert items["lot3"] is None

    command.downgrade(config, "0007")
    assert not asyncio.run(_has_column(empty_url, "summary_item"))
    if on_pg:
        assert asyncio.run(_functions(empty_url)) == ["rewardpoints_add", "rewardpoints_redeem"]
    # Revision 0007's functions and code spend without the column.
    assert asyncio.run(_spend(empty_url, 30)) == 0

    command.upgrade(config, "head")
    items = asyncio.run(_stored_items(empty_url))
    for lot in ("lot1", "lot2", "lot3"):
        assert items[lot] == (items[f"expected:{lot}"] if on_pg else None)
    assert '"usedPoints":30,' in items["expected:lot3"]  # type: ignore[operator]

    if on_pg:  # the upgrade's fill, a few of the table's keys at a time
        for batch in (1, 2, 3):
            assert asyncio.run(_fill_again(empty_url, batch)) == 3
        items = asyncio.run(_stored_items(empty_url))
        for lot in ("lot1", "lot2", "lot3"):
            assert items[lot] == items[f"expected:{lot}"]


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
