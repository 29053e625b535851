"""A used-up lot keeps its summary item: the JSON of it that summaries list, made once.

A lot whose last point is spent never changes again: nothing adds to a lot, no redemption draws
from it any more, and its ``usedWith`` list is complete. Yet every summary of its customer built
its JSON object again: two timestamps formatted, strings escaped, and one probe of its usages for
``usedWith``. For a customer with 100,000 lots that was nearly all of PostgreSQL's work on the
summary (~500 ms), and it grew with the history although the history no longer changed.

On PostgreSQL, the redemption that spends a lot's last point now also stores the lot's item,
exactly as summaries write it, in ``lots.summary_item`` (in the UPDATE that spends it, which
already writes a new version of the row, so there are no more row versions than before), and
summaries read it instead of building it. Lots with points left keep ``summary_item`` NULL and
are built as before. The cost falls on a redemption that spends a lot to its end: the item is
made and the row is ~250 bytes wider (measured where every redemption does so: ~30 us more per
call, ~8-10 % fewer calls per second).

The upgrade commits the column (a change of the catalogue only, but it waits for, and then
briefly blocks, every query on ``lots``) and the functions, then fills the column for the lots
already used up, 10,000 of the table's keys at a time, each batch committed on its own: only
those rows are locked, which nothing writes any more, and the service reads correctly with the
column filled or not, so it can run meanwhile (17 s for 1.25M lots, 319,000 of them used up,
on a 2-core machine). Each filled row gets a new version: a ``VACUUM``
of ``lots`` afterwards gives the old ones back.

The item is a cache of the lot's fields in the summaries' format (documents.py). Should that
format ever change, a revision must set the column back to NULL (and fill it again).

SQLite gets the column too (the schema is one), but leaves it NULL: its summaries are built in
Python.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _revision_0006_redeem() -> str:
    """Revision 0006's redeem function (for the downgrade)."""
    path = Path(__file__).with_name("2026_11_26_0006_active_points.py")
    spec = importlib.util.spec_from_file_location("rewardpoints_migration_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.REDEEM)


def _stamp(value: str) -> str:
    return (
        f"'\"' || to_char({value} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') || '+00:00\"'"
    )


def _item(
    tenant: str,
    lot_id: str,
    reference: str,
    description: str,
    points: str,
    used: str,
    created_at: str,
    valid_until: str,
    after: str,
) -> str:
    """A lot's item as documents.py writes it (``_lot_item``): the same keys in the same order,
    compact separators, strings escaped by to_json; usedWith is the lot's redemptions in the
    order they drew from it. test_documents checks that both give the same bytes."""
    return f"""'{{"id":' || to_json({lot_id}::text)::text
    || ',"reference-id":' || COALESCE(to_json({reference})::text, 'null')
    || ',"description":' || to_json({description})::text
    || ',"points":' || ({points})::text
    || ',"createdAt":' || {_stamp(created_at)}
    || ',"allPointsAfterCreation":' || ({after})::text
    || ',"usedPoints":' || ({used})::text
    || ',"validUntil":' || {_stamp(valid_until)}
    || ',"usedWith":[' || COALESCE((
        SELECT string_agg(item, ',') FROM (
            SELECT to_json(u.redemption_id::text)::text AS item
            FROM lot_usages u
            WHERE u.tenant = {tenant} AND u.lot_id = {lot_id}
            ORDER BY u.created_at, u.redemption_id) AS used), '')
    || ']}}'"""  # noqa: S608 - column and parameter names only


# The item of a lot with these fields; for the upgrade below, and for data loaded in bulk.
LOT_ITEM = f"""
CREATE OR REPLACE FUNCTION rewardpoints_lot_item(
    p_tenant varchar, p_id varchar, p_reference text, p_description text, p_points bigint,
    p_used_points bigint, p_created_at timestamptz, p_valid_until timestamptz,
    p_all_points_after_creation bigint
) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN {
    _item(
        "p_tenant",
        "p_id",
        "p_reference",
        "p_description",
        "p_points",
        "p_used_points",
        "p_created_at",
        "p_valid_until",
        "p_all_points_after_creation",
    )
};
END
$$;
"""

# The item of the lot an UPDATE of ``lots`` spends to its last point, written out in the
# statement. (Called as a SQL-language function it was planned again at every call: ~250 us.)
_SPENT_ITEM = _item(
    "lots.tenant",
    "lots.id",
    "lots.reference_id",
    "lots.description",
    "lots.points",
    "lots.used_points + v_take",
    "lots.created_at",
    "lots.valid_until",
    "lots.all_points_after_creation",
)

# Revision 0006's function, but for the draws: the usage is stored first, so that the UPDATE
# spending a lot's last point finds the whole usedWith list for the item it stores.
REDEEM = """
CREATE OR REPLACE FUNCTION rewardpoints_redeem(
    p_tenant varchar, p_customer varchar, p_id varchar, p_client_id boolean,
    p_description text, p_points bigint, p_hash varchar, p_now timestamptz
) RETURNS TABLE (outcome text, available bigint)
LANGUAGE plpgsql SET timezone TO 'UTC' AS $$
DECLARE
    v_now timestamptz;
    v_existing varchar;
    v_available bigint;
    v_first_expiry timestamptz;
    v_wanted bigint;
    v_take bigint;
    v_lot record;
BEGIN
    PERFORM 1 FROM accounts WHERE tenant = p_tenant AND customer_id = p_customer FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, 0::bigint;
        RETURN;
    END IF;
    v_now := COALESCE(p_now, clock_timestamp());
    IF p_client_id THEN
        SELECT h INTO v_existing FROM (
            SELECT request_hash AS h FROM lots WHERE tenant = p_tenant AND id = p_id
            UNION ALL
            SELECT request_hash FROM redemptions WHERE tenant = p_tenant AND id = p_id
        ) AS earlier LIMIT 1;
        IF FOUND THEN
            RETURN QUERY SELECT CASE WHEN v_existing = p_hash THEN 'retry' ELSE 'conflict' END,
                                0::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT COALESCE(SUM(points - used_points), 0), MIN(valid_until)
      INTO v_available, v_first_expiry FROM lots
     WHERE tenant = p_tenant AND customer_id = p_customer
       AND NOT used_up AND valid_until > v_now;
    IF v_available < p_points THEN
        RETURN QUERY SELECT 'insufficient'::text, v_available;
        RETURN;
    END IF;
    INSERT INTO redemptions (tenant, id, customer_id, description, points, created_at,
                             all_points_after_creation, request_hash)
    VALUES (p_tenant, p_id, p_customer, p_description, p_points, v_now,
            v_available - p_points, p_hash);
    v_wanted := p_points;
    FOR v_lot IN
        SELECT id, points - used_points AS remaining FROM lots
         WHERE tenant = p_tenant AND customer_id = p_customer
           AND NOT used_up AND valid_until > v_now
         ORDER BY created_at, id
    LOOP
        EXIT WHEN v_wanted = 0;
        v_take := LEAST(v_wanted, v_lot.remaining);
        INSERT INTO lot_usages (tenant, lot_id, redemption_id, points, created_at)
        VALUES (p_tenant, v_lot.id, p_id, v_take, v_now);
        IF v_take = v_lot.remaining THEN
            UPDATE lots SET used_points = used_points + v_take,
                            summary_item = {spent_item}
             WHERE tenant = p_tenant AND id = v_lot.id;
        ELSE
            UPDATE lots SET used_points = used_points + v_take
             WHERE tenant = p_tenant AND id = v_lot.id;
        END IF;
        v_wanted := v_wanted - v_take;
    END LOOP;
    -- The earliest expiry before the draws: the lots used up since count for nothing, so it
    -- may come early, never late.
    UPDATE accounts
       SET active_points = v_available - p_points, active_since = v_now,
           active_until = COALESCE(v_first_expiry, 'infinity')
     WHERE tenant = p_tenant AND customer_id = p_customer;
    RETURN QUERY SELECT 'redeemed'::text, v_available - p_points;
END
$$;
""".replace("{spent_item}", _SPENT_ITEM)

# The lots used up before this revision, filled a batch of the table's keys at a time, each
# batch committed on its own: the next batch's last key, then the batch.
_FILL_BATCH = 10_000
_NEXT_BOUND = text("""
SELECT tenant, id FROM lots
WHERE (tenant, id) > (:tenant, :id)
ORDER BY tenant, id
OFFSET :batch - 1 LIMIT 1
""")
_SET_ITEM = """
UPDATE lots
SET summary_item = rewardpoints_lot_item(tenant, id, reference_id, description, points,
                                         used_points, created_at, valid_until,
                                         all_points_after_creation)
WHERE used_up AND summary_item IS NULL AND (tenant, id) > (:tenant, :id)"""
_FILL = text(_SET_ITEM + " AND (tenant, id) <= (:to_tenant, :to_id)")
_FILL_REST = text(_SET_ITEM)


def _fill(connection: sa.Connection) -> None:
    after = {"tenant": "", "id": ""}
    while True:
        bound = connection.execute(_NEXT_BOUND, {**after, "batch": _FILL_BATCH}).first()
        if bound is None:
            connection.execute(_FILL_REST, after)
            return
        connection.execute(_FILL, {**after, "to_tenant": bound[0], "to_id": bound[1]})
        after = {"tenant": bound[0], "id": bound[1]}


def upgrade() -> None:
    op.add_column("lots", sa.Column("summary_item", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LOT_ITEM)
        op.execute(REDEEM)
        # The column and the functions are committed first (the column's lock on the table is
        # held only that long); from then on each redemption stores its items, and the service
        # reads the lots correctly whether their items are filled yet or not.
        with op.get_context().autocommit_block():
            if op.get_context().as_sql:
                # Printed SQL (migrate --sql): one statement for every lot.
                op.execute(_SET_ITEM.replace("(:tenant, :id)", "('', '')"))
            else:
                _fill(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_revision_0006_redeem())
        op.execute(
            "DROP FUNCTION rewardpoints_lot_item(varchar, varchar, text, text, bigint, bigint,"
            " timestamptz, timestamptz, bigint)"
        )
    # Not through a batch on SQLite, which would copy the generated column used_up.
    op.execute("ALTER TABLE lots DROP COLUMN summary_item")
