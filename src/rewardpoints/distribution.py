"""Where each table and each database function would live on a distributed PostgreSQL (Citus).

The plan that docs/scaling.md explains, in one place: tests/test_distribution.py holds the
migrated schema and the SQL functions to it, and a table or function added without a place in
it fails that test. Nothing here runs in the service.

A customer's rows (account, lots, redemptions, usages, coupons) are hash-distributed by
``customer_id`` and co-located, so every ledger call touches one shard group and runs, whole, on
the worker that holds it. The tenant stays the first column of every key and of every filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    DISTRIBUTED = "distributed"  # create_distributed_table: hash-sharded by ``column``
    REFERENCE = "reference"  # create_reference_table: a copy on every node
    LOCAL = "local"  # citus_add_local_table_to_metadata: kept on the coordinator


TENANT = "tenant"
CUSTOMER = "customer_id"
# The co-location group of the customers' rows, named by its first table.
CUSTOMERS = "accounts"


@dataclass(frozen=True, slots=True)
class TablePlan:
    kind: Kind
    # The distribution column (distributed tables only).
    column: str | None = None
    # The table whose shards this one's are placed with; None starts a group of its own.
    colocate_with: str | None = None


def _customer_rows(colocate_with: str | None = CUSTOMERS) -> TablePlan:
    return TablePlan(Kind.DISTRIBUTED, CUSTOMER, colocate_with)


# In the order Citus needs them made: a table before those whose foreign keys name it.
TABLES: dict[str, TablePlan] = {
    "accounts": _customer_rows(colocate_with=None),
    "lots": _customer_rows(),
    "redemptions": _customer_rows(),
    "lot_usages": _customer_rows(),
    "coupons": _customer_rows(),
    # A customer's history and the reversals of its redemptions (migration 0012).
    "journal": _customer_rows(),
    "reversals": _customer_rows(),
    # Prebuilt stretches of a customer's summary (migration 0014).
    "summary_segments": _customer_rows(),
    # An order is awarded once per tenant, whoever the customer: its key is the order's.
    "awarded_orders": TablePlan(Kind.DISTRIBUTED, "order_id"),
    # An Idempotency-Key is the tenant's, not a customer's.
    "idempotency_keys": TablePlan(Kind.DISTRIBUTED, "key"),
    # Small, read by every redemption for a coupon, written by administrators.
    "redeem_options": TablePlan(Kind.REFERENCE),
    # Claimed by the runners with FOR UPDATE SKIP LOCKED, which Citus runs on one shard only.
    "outbox": TablePlan(Kind.LOCAL),
    "alembic_version": TablePlan(Kind.LOCAL),
}


class Call(StrEnum):
    # create_distributed_function(..., distribution argument, colocate_with => 'accounts'):
    # a call runs on the worker holding the customer's shards.
    ONE_CUSTOMER = "one customer"
    # Several customers in one call: not delegated; runs on the coordinator, statement by
    # statement (the coalesced writes of direct.py, which Citus would not need).
    SEVERAL_CUSTOMERS = "several customers"
    # Touches no table: created on every node (create_distributed_function without a
    # distribution argument) so the others can call it there.
    NO_TABLE = "no table"


@dataclass(frozen=True, slots=True)
class FunctionPlan:
    call: Call
    # The argument that holds each key column's value: every statement of the function on a
    # distributed table filters (or writes) that table's distribution column and the tenant
    # with these arguments, so it stays on one shard.
    keys: tuple[tuple[str, str], ...] = ()
    # Delegated inside a transaction block too (force_delegation): Citus then refuses any
    # statement that leaves the shards of the customer, so only a function whose tables are
    # all in the customers' group (or reference tables) may have it.
    force_delegation: bool = False

    @property
    def distribution_argument(self) -> str | None:
        return dict(self.keys).get(CUSTOMER)


_CUSTOMER_KEYS = ((TENANT, "p_tenant"), (CUSTOMER, "p_customer"))


def _one_customer(*more: tuple[str, str], force_delegation: bool = True) -> FunctionPlan:
    return FunctionPlan(Call.ONE_CUSTOMER, (*_CUSTOMER_KEYS, *more), force_delegation)


FUNCTIONS: dict[str, FunctionPlan] = {
    "rewardpoints_add": _one_customer(),
    "rewardpoints_add_lot": _one_customer(),
    "rewardpoints_charge_back": _one_customer(),
    "rewardpoints_create_customer": _one_customer(),
    "rewardpoints_delete_customer": _one_customer(),
    "rewardpoints_entry_seen": _one_customer(),
    "rewardpoints_entry_time": _one_customer(),
    "rewardpoints_lock_account": _one_customer(),
    "rewardpoints_lot_item": _one_customer(),
    "rewardpoints_redeem": _one_customer(),
    "rewardpoints_available": _one_customer(),
    "rewardpoints_expire": _one_customer(),
    "rewardpoints_balance_at": _one_customer(),
    "rewardpoints_deduct": _one_customer(),
    "rewardpoints_draw": _one_customer(),
    "rewardpoints_draw_plan": _one_customer(),
    "rewardpoints_expiring_lots": _one_customer(),
    "rewardpoints_history": _one_customer(),
    "rewardpoints_lapsed_between": _one_customer(),
    "rewardpoints_preview_add": _one_customer(),
    "rewardpoints_preview_redeem": _one_customer(),
    "rewardpoints_record": _one_customer(),
    "rewardpoints_reverse": _one_customer(),
    "rewardpoints_reverse_plan": _one_customer(),
    # Reads and writes the order's row, which lives on the order's shard, not the customer's.
    "rewardpoints_award_order": _one_customer(("order_id", "p_order"), force_delegation=False),
    "rewardpoints_add_many": FunctionPlan(Call.SEVERAL_CUSTOMERS),
    "rewardpoints_redeem_many": FunctionPlan(Call.SEVERAL_CUSTOMERS),
    "rewardpoints_lock_accounts": FunctionPlan(Call.SEVERAL_CUSTOMERS),
    # Tenant-wide reports: multi-shard reads on the coordinator (docs/scaling.md).
    "rewardpoints_expiring_customers": FunctionPlan(Call.SEVERAL_CUSTOMERS),
    "rewardpoints_liability": FunctionPlan(Call.SEVERAL_CUSTOMERS),
    "rewardpoints_now": FunctionPlan(Call.NO_TABLE),
    "rewardpoints_read_now": FunctionPlan(Call.NO_TABLE),
    "rewardpoints_raise_refusal": FunctionPlan(Call.NO_TABLE),
    "rewardpoints_lapsed": FunctionPlan(Call.NO_TABLE),
    "rewardpoints_valid_until": FunctionPlan(Call.NO_TABLE),
}

# What the schema must change before the move, each as tests/test_distribution.py words it
# (docs/scaling.md says why and how). The test fails while the schema differs from this list in
# either direction, so an entry goes when its change is made, and nothing new slips in.
CHANGES_NEEDED: frozenset[str] = frozenset(
    {
        # A coupon code is unique per tenant across customers; with coupons kept by customer,
        # the code's uniqueness needs a table of its own, distributed by the code.
        "coupons: primary key pk_coupons (tenant, code) lacks customer_id",
        # Citus refuses a STABLE function with column arguments in an UPDATE of a distributed
        # table: the lot's summary item must be built first, then set.
        # (in the functions that finish a lot: rewardpoints_draw, for every redemption, and
        # rewardpoints_add_lot, when a lot pays a debt off)
        "rewardpoints_add_lot: UPDATE lots calls stable rewardpoints_lot_item with columns",
        "rewardpoints_draw: UPDATE lots calls stable rewardpoints_lot_item with columns",
    }
)


def _quoted(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def citus_statements(signatures: dict[str, str]) -> list[str]:
    """The statements that distribute the schema, given each planned function's argument
    types as ``pg_get_function_identity_arguments`` writes them (types only)."""
    statements = []
    for table, plan in TABLES.items():
        if table == "alembic_version":
            continue
        if plan.kind is Kind.DISTRIBUTED:
            assert plan.column is not None
            group = plan.colocate_with or "none"
            statements.append(
                f"SELECT create_distributed_table({_quoted(table)}, {_quoted(plan.column)},"
                f" colocate_with => {_quoted(group)});"
            )
        elif plan.kind is Kind.REFERENCE:
            statements.append(f"SELECT create_reference_table({_quoted(table)});")
        else:
            statements.append(f"SELECT citus_add_local_table_to_metadata({_quoted(table)});")
    for function, fplan in FUNCTIONS.items():
        name = _quoted(f"{function}({signatures[function]})")
        argument = fplan.distribution_argument
        if fplan.call is Call.ONE_CUSTOMER and argument is not None:
            force = ", force_delegation => true" if fplan.force_delegation else ""
            statements.append(
                f"SELECT create_distributed_function({name}, {_quoted(argument)},"
                f" colocate_with => {_quoted(CUSTOMERS)}{force});"
            )
        else:
            statements.append(f"SELECT create_distributed_function({name});")
    return statements
