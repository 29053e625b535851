"""The migrated schema and its SQL functions fit the plan for Citus (rewardpoints.distribution,
explained in docs/scaling.md): every key of a distributed table holds its distribution column
and the tenant, and no statement of a ledger function reaches another customer's rows. The
checker (distribution_check.py, whose docstring says what it can and cannot prove) is itself
shown to catch each kind of break, on the migrated database changed in a transaction that is
rolled back."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from rewardpoints.distribution import CHANGES_NEEDED, TABLES, citus_statements

from .distribution_check import describe, findings, read_functions

SCALING_DOC = Path(__file__).resolve().parents[1] / "docs" / "scaling.md"


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the migrated database, in a transaction that is rolled back."""
    url = make_url(database_url)
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database,
    )
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()


async def test_schema_and_functions_fit_the_distribution_plan(conn: asyncpg.Connection) -> None:
    found = await findings(conn)
    assert found == CHANGES_NEEDED, describe(found ^ CHANGES_NEEDED)


# A planned function replaced by a variant that breaks one rule; its header is the real one.
_ENTRY_SEEN = """
CREATE OR REPLACE FUNCTION rewardpoints_entry_seen(
    p_tenant varchar, p_customer varchar, p_id varchar, p_hash varchar
) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_existing varchar;
BEGIN
    {body}
    RETURN v_existing;
END
$$
"""
_CHARGE_BACK = """
CREATE OR REPLACE FUNCTION rewardpoints_charge_back(
    p_tenant varchar, p_customer varchar, p_id varchar, p_description text, p_points bigint,
    p_validity_months integer, p_hash varchar, p_actor text
) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    {body}
END
$$
"""

BREAKS = {
    "a unique constraint without the distribution column": (
        ["ALTER TABLE lots ADD CONSTRAINT uq_lots_reference UNIQUE (tenant, reference_id)"],
        {"lots: unique constraint uq_lots_reference (tenant, reference_id) lacks customer_id"},
    ),
    "a unique index without the tenant": (
        ["CREATE UNIQUE INDEX ix_redemptions_id ON redemptions (customer_id, id)"],
        {"redemptions: unique index ix_redemptions_id (customer_id, id) lacks tenant"},
    ),
    "a partial unique index on a table distributed by another key": (
        [
            "CREATE UNIQUE INDEX ix_awarded_orders_lot ON awarded_orders (tenant, lot_id)"
            " WHERE lot_id IS NOT NULL"
        ],
        {"awarded_orders: unique index ix_awarded_orders_lot (tenant, lot_id) lacks order_id"},
    ),
    "a table left out of the plan": (
        ["CREATE TABLE tiers (tenant varchar(16) PRIMARY KEY, name text)"],
        {"tiers: not in the distribution plan"},
    ),
    "a foreign key from a reference table to a distributed one": (
        [
            'ALTER TABLE redeem_options ADD COLUMN owner varchar(255) COLLATE "C"',
            "ALTER TABLE redeem_options ADD CONSTRAINT fk_owner FOREIGN KEY (tenant, owner)"
            " REFERENCES accounts (tenant, customer_id)",
        ],
        {"redeem_options: foreign key fk_owner from a reference table to a distributed table"},
    ),
    "a foreign key between tables of different distribution": (
        [
            "ALTER TABLE awarded_orders ADD CONSTRAINT fk_customer FOREIGN KEY"
            " (tenant, customer_id) REFERENCES accounts (tenant, customer_id)"
        ],
        {"awarded_orders: foreign key fk_customer to accounts, which is not co-located"},
    ),
    "a read of every customer's entries": (
        [
            _ENTRY_SEEN.format(
                body="SELECT request_hash INTO v_existing FROM lots"
                " WHERE tenant = p_tenant AND id = p_id;"
            )
        ],
        {"rewardpoints_entry_seen: SELECT FROM lots not by customer_id = p_customer"},
    ),
    "a filter that an OR undoes": (
        [
            _ENTRY_SEEN.format(
                body="SELECT request_hash INTO v_existing FROM redemptions r"
                " WHERE r.tenant = p_tenant AND (r.customer_id = p_customer OR r.id = p_id);"
            )
        ],
        {"rewardpoints_entry_seen: SELECT FROM redemptions not by customer_id = p_customer"},
    ),
    "a write to another customer": (
        [
            _CHARGE_BACK.format(
                body="INSERT INTO accounts (tenant, customer_id, created_at)"
                " VALUES (p_tenant, 'guest', now()); RETURN 'added';"
            )
        ],
        {"rewardpoints_charge_back: INSERT INTO accounts not by customer_id = p_customer"},
    ),
    "a call that passes another customer on": (
        [
            _CHARGE_BACK.format(
                body="RETURN rewardpoints_add_lot(p_tenant, p_id, p_id, false, NULL,"
                " p_description, p_points, NULL, p_validity_months, p_hash);"
            )
        ],
        {
            "rewardpoints_charge_back: calls rewardpoints_add_lot"
            " with a customer_id other than p_customer"
        },
    ),
    "the customer argument changed before use": (
        [
            _CHARGE_BACK.format(
                body="p_customer := lower(p_customer);"
                " PERFORM rewardpoints_lock_account(p_tenant, p_customer, false);"
                " RETURN 'added';"
            )
        ],
        {"rewardpoints_charge_back: assigns p_customer"},
    ),
    "dynamic SQL": (
        [
            _CHARGE_BACK.format(
                body="EXECUTE format('DELETE FROM lots WHERE tenant = %L', p_tenant);"
                " RETURN 'added';"
            )
        ],
        {"rewardpoints_charge_back: dynamic SQL cannot be checked"},
    ),
    "a force-delegated function reaching another shard group": (
        [
            _CHARGE_BACK.format(
                body="PERFORM 1 FROM awarded_orders WHERE tenant = p_tenant AND order_id = p_id;"
                " RETURN 'added';"
            )
        ],
        {
            "rewardpoints_charge_back: SELECT FROM awarded_orders without an argument for order_id",
            "rewardpoints_charge_back: force-delegated, but reaches awarded_orders",
        },
    ),
    "a volatile function in an UPDATE": (
        [
            _CHARGE_BACK.format(
                body="UPDATE accounts SET active_since = clock_timestamp()"
                " WHERE tenant = p_tenant AND customer_id = p_customer; RETURN 'added';"
            )
        ],
        {"rewardpoints_charge_back: UPDATE accounts calls volatile clock_timestamp"},
    ),
    "a function left out of the plan": (
        [
            "CREATE FUNCTION rewardpoints_rewind(p_tenant varchar, p_customer varchar)"
            " RETURNS void LANGUAGE sql AS"
            " $$ DELETE FROM lots WHERE tenant = p_tenant AND customer_id = p_customer $$"
        ],
        {"rewardpoints_rewind: not in the distribution plan"},
    ),
}


@pytest.mark.parametrize("statements, expected", BREAKS.values(), ids=BREAKS.keys())
async def test_the_check_reports_each_kind_of_break(
    conn: asyncpg.Connection, statements: list[str], expected: set[str]
) -> None:
    # Other tests' rows could collide with a new unique key; they come back with the rollback.
    await conn.execute(f"TRUNCATE {', '.join(t for t in TABLES if t != 'alembic_version')} CASCADE")
    for statement in statements:
        await conn.execute(statement)
    found = await findings(conn)
    assert found - CHANGES_NEEDED == expected, describe(found - CHANGES_NEEDED)


async def test_the_scaling_doc_shows_the_statements_of_the_plan(conn: asyncpg.Connection) -> None:
    """docs/scaling.md's Citus section lists, in its first ``sql`` block, the statements the
    plan makes (with the migrated functions' signatures), so the two cannot drift apart."""
    text = SCALING_DOC.read_text()
    section = text[text.index("## Beyond one PostgreSQL: Citus") :]
    block = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert block is not None
    shown = [" ".join(line.split()) for line in _statements_of(block.group(1))]
    signatures = {name: f.signature for name, f in (await read_functions(conn)).items()}
    assert shown == citus_statements(signatures)


def _statements_of(sql: str) -> list[str]:
    """The statements of a block, each joined onto one line; comment lines left out."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() + ";" for part in " ".join(lines).split(";") if part.strip()]
