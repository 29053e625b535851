"""The migrated schema and its SQL functions checked against the distribution plan
(rewardpoints.distribution): what would stop them from running on Citus as planned.

The tables are read from the catalog, the functions from ``pg_get_functiondef``, parsed by
PostgreSQL's own parser (pglast: libpg_query, and its PL/pgSQL parser). Each finding is one
line of text, so a test can compare them with the plan's list of known changes.

The tables: every table is planned; a distributed table's primary key, unique constraints and
unique indexes (partial ones too) hold its distribution column and the tenant; a foreign key
joins only what Citus can join (co-located distributed tables on their distribution columns, or
a table and a reference table); the tables of a co-location group have distribution columns of
one type; a distributed or reference table generates no identity smaller than bigint.

The functions: every function is planned; one that works on one customer filters every
statement on a distributed table by that table's distribution column and the tenant, each equal
to the function's own argument for it (``WHERE tenant = p_tenant AND customer_id =
p_customer``, or the values an INSERT writes); passes those same arguments on to every planned
function it calls; never assigns them; runs no dynamic SQL; and, if it is to be force-delegated,
reaches only the customers' shards and reference tables, through its calls too. No UPDATE of a
distributed table calls a volatile function, or a stable one with columns (Citus refuses both).

Limits (a statement the checker cannot prove is reported, never passed over):
- a filter counts only as a top-level AND term of the statement's WHERE (or a JOIN's ON), as
  ``column = argument`` (casts allowed); a key reached another way (``IN``, a join to another
  pinned table, a value read into a variable first) is reported although it may be right;
- an unqualified column is taken as the table's only when the statement names one relation;
- a name that is both a PL/pgSQL variable and a column is taken as the variable (PL/pgSQL
  itself refuses such ambiguity by default);
- only the functions of the current schema are read; SQL sent by the service itself (ledger.py,
  documents.py, idempotency.py, outbox.py) is not, and docs/scaling.md covers it instead;
- what Citus does at run time (routing, 2PC, errors) is not exercised: no Citus runs here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pglast
from pglast import ast

from rewardpoints.distribution import (
    CUSTOMERS,
    FUNCTIONS,
    TABLES,
    TENANT,
    Call,
    FunctionPlan,
    Kind,
)

_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""
_UNIQUE_KEYS = """
SELECT t.relname AS "table", i.relname AS "index", ix.indisprimary AS "primary",
       con.contype::text AS "constraint",
       array(SELECT a.attname::text
               FROM unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
              WHERE k.n <= ix.indnkeyatts ORDER BY k.n) AS columns
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_class t ON t.oid = ix.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_constraint con ON con.conindid = ix.indexrelid AND con.conrelid = t.oid
WHERE n.nspname = current_schema() AND (ix.indisunique OR ix.indisexclusion)
ORDER BY 1, 2
"""
_FOREIGN_KEYS = """
SELECT con.conname AS name, r.relname AS "table", f.relname AS referenced,
       array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
              ORDER BY k.n) AS columns,
       array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
              ORDER BY k.n) AS referenced_columns
FROM pg_constraint con
JOIN pg_class r ON r.oid = con.conrelid
JOIN pg_class f ON f.oid = con.confrelid
JOIN pg_namespace n ON n.oid = r.relnamespace
WHERE con.contype = 'f' AND n.nspname = current_schema()
ORDER BY 1
"""
_COLUMNS = """
SELECT c.relname AS "table", a.attname AS "column",
       format_type(a.atttypid, a.atttypmod) AS type, co.collname AS collation,
       a.attidentity <> '' OR pg_get_serial_sequence(
           format('%I.%I', n.nspname, c.relname), a.attname) IS NOT NULL AS generated_id,
       a.atttypid = 'int8'::regtype AS bigint
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND a.attnum > 0
  AND NOT a.attisdropped
"""
_FUNCTIONS = """
SELECT p.proname AS name, l.lanname AS language, pg_get_functiondef(p.oid) AS definition,
       p.prosrc AS source, p.provolatile::text AS volatility,
       oidvectortypes(p.proargtypes) AS signature,
       COALESCE(p.proargnames, '{}') AS names, COALESCE(p.proargmodes::text[], '{}') AS modes
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = current_schema() AND p.prokind = 'f'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                   WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                     AND d.deptype = 'e')
ORDER BY 1
"""
# The most volatile of each name's overloads, for the functions an UPDATE calls.
_VOLATILITY = "SELECT proname AS name, max(provolatile::text) AS volatility FROM pg_proc GROUP BY 1"


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    language: str
    definition: str
    source: str
    volatility: str
    signature: str
    arguments: tuple[str, ...]


async def read_functions(conn: asyncpg.Connection) -> dict[str, Function]:
    rows = await conn.fetch(_FUNCTIONS)
    return {
        row["name"]: Function(
            row["name"],
            row["language"],
            row["definition"],
            row["source"],
            row["volatility"],
            row["signature"],
            _input_arguments(row["names"], row["modes"]),
        )
        for row in rows
    }


def _input_arguments(names: list[str], modes: list[str]) -> tuple[str, ...]:
    """The names of the arguments a call passes (no modes: all are input arguments)."""
    if not modes:
        return tuple(names)
    return tuple(name for name, mode in zip(names, modes, strict=True) if mode in ("i", "b", "v"))


async def findings(conn: asyncpg.Connection) -> set[str]:
    """Everything in the database ``conn`` is connected to that differs from the plan."""
    functions = await read_functions(conn)
    volatility = {row["name"]: row["volatility"] for row in await conn.fetch(_VOLATILITY)}
    return {*await table_findings(conn), *function_findings(functions, volatility)}


def _group(table: str) -> str:
    """The first table of ``table``'s co-location group."""
    plan = TABLES[table]
    while plan.colocate_with is not None:
        table = plan.colocate_with
        plan = TABLES[table]
    return table


def _kind(table: str) -> Kind | None:
    plan = TABLES.get(table)
    return plan.kind if plan is not None else None


async def table_findings(conn: asyncpg.Connection) -> list[str]:
    found: list[str] = []
    tables = {row["relname"] for row in await conn.fetch(_TABLES)}
    for table in sorted(tables - TABLES.keys()):
        found.append(f"{table}: not in the distribution plan")
    for table in sorted(TABLES.keys() - tables):
        found.append(f"{table}: planned, but not in the schema")
    columns = {(row["table"], row["column"]): row for row in await conn.fetch(_COLUMNS)}

    for table in sorted(tables & TABLES.keys()):
        plan = TABLES[table]
        if plan.kind is Kind.LOCAL:
            continue
        for (owner, column), row in sorted(columns.items()):
            if owner == table and row["generated_id"] and not row["bigint"]:
                found.append(f"{table}: {column} is generated from a {row['type']} sequence")
        if plan.kind is not Kind.DISTRIBUTED:
            continue
        assert plan.column is not None
        column_row = columns.get((table, plan.column))
        if column_row is None:
            found.append(f"{table}: no distribution column {plan.column}")
            continue
        root = _group(table)
        root_row = columns.get((root, TABLES[root].column or ""))
        if root_row is not None and (root_row["type"], root_row["collation"]) != (
            column_row["type"],
            column_row["collation"],
        ):
            found.append(f"{table}: {plan.column} is not of the type of {root}'s")

    for row in await conn.fetch(_UNIQUE_KEYS):
        table = row["table"]
        keyed = TABLES.get(table)
        if keyed is None or keyed.kind is not Kind.DISTRIBUTED:
            continue
        if row["primary"]:
            what = "primary key"
        elif row["constraint"] == "u":
            what = "unique constraint"
        elif row["constraint"] == "x":
            what = "exclusion constraint"
        else:
            what = "unique index"
        key = ", ".join(row["columns"])
        for needed in (keyed.column, TENANT):
            if needed not in row["columns"]:
                found.append(f"{table}: {what} {row['index']} ({key}) lacks {needed}")

    for row in await conn.fetch(_FOREIGN_KEYS):
        found.extend(_foreign_key_findings(row))
    return found


def _foreign_key_findings(row: asyncpg.Record) -> list[str]:
    table, referenced, name = row["table"], row["referenced"], row["name"]
    kinds = (_kind(table), _kind(referenced))
    if None in kinds:
        return []  # reported as unplanned
    if kinds == (Kind.DISTRIBUTED, Kind.DISTRIBUTED):
        if _group(table) != _group(referenced):
            return [f"{table}: foreign key {name} to {referenced}, which is not co-located"]
        pairs = set(zip(row["columns"], row["referenced_columns"], strict=True))
        if (TABLES[table].column, TABLES[referenced].column) not in pairs:
            return [f"{table}: foreign key {name} does not join the distribution columns"]
        return []
    allowed = {
        (Kind.DISTRIBUTED, Kind.REFERENCE),
        (Kind.REFERENCE, Kind.REFERENCE),
        (Kind.REFERENCE, Kind.LOCAL),
        (Kind.LOCAL, Kind.REFERENCE),
        (Kind.LOCAL, Kind.LOCAL),
    }
    if kinds in allowed:
        return []
    return [f"{table}: foreign key {name} from a {kinds[0]} table to a {kinds[1]} table"]


# ---- functions ----------------------------------------------------------------------------


def _statements(function: Function) -> tuple[list[str], list[str], set[str]]:
    """The SQL of each statement and expression of the function; findings about its PL/pgSQL
    itself (dynamic SQL, assignments to its key arguments); the names of its variables."""
    if function.language == "sql":
        return [function.source], [], set()
    if function.language != "plpgsql":
        return [], [f"{function.name}: language {function.language} cannot be checked"], set()
    tree = pglast.parse_plpgsql(function.definition)
    datums = [next(iter(datum.values())) for datum in tree[0]["PLpgSQL_function"]["datums"]]
    names = {datum["refname"] for datum in datums if "refname" in datum}
    keys = (
        set(dict(FUNCTIONS[function.name].keys).values()) if function.name in FUNCTIONS else set()
    )
    sql: list[str] = []
    problems: list[str] = []
    for node in _json_nodes(tree):
        if (
            "dynquery" in node
            or "PLpgSQL_stmt_dynexecute" in node
            or "PLpgSQL_stmt_dynfors" in node
        ):
            problems.append(f"{function.name}: dynamic SQL cannot be checked")
        expression = node.get("PLpgSQL_expr")
        if isinstance(expression, dict):
            query = str(expression["query"])
            mode = int(expression.get("parseMode", 0))
            if mode in (3, 4, 5):  # an assignment: "target := expression"
                query = "SELECT " + query.split(":=", 1)[1]
            elif mode != 0:
                query = "SELECT " + query
            sql.append(query)
        assigned = node.get("PLpgSQL_stmt_assign")
        if isinstance(assigned, dict):
            target = datums[int(assigned["varno"])].get("refname")
            if target in keys:
                problems.append(f"{function.name}: assigns {target}")
        for slot in ("target", "var"):
            for target in _target_names(node.get(slot), datums):
                if target in keys:
                    problems.append(f"{function.name}: assigns {target}")
    return sql, problems, names


def _json_nodes(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _json_nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_nodes(item)


def _target_names(target: Any, datums: list[dict[str, Any]]) -> list[str]:
    if not isinstance(target, dict):
        return []
    names = []
    for datum in target.values():
        if not isinstance(datum, dict):
            continue
        if "refname" in datum:
            names.append(str(datum["refname"]))
        for item in datum.get("fields", []):
            names.append(str(datums[int(item["varno"])].get("refname", item["name"])))
    return names


@dataclass(slots=True)
class _Scope:
    """One statement: its relations by alias (alias -> table), and which key columns of each
    are pinned to the function's arguments."""

    relations: dict[str, str] = field(default_factory=dict)
    pinned: dict[str, set[str]] = field(default_factory=dict)
    update_of: str | None = None


@dataclass(slots=True)
class _FunctionCheck:
    function: Function
    plan: FunctionPlan
    functions: dict[str, Function]
    volatility: dict[str, str]
    variables: set[str]
    found: list[str] = field(default_factory=list)
    tables: set[str] = field(default_factory=set)
    calls: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.function.name

    def argument_of(self, node: Any) -> str | None:
        """The function argument ``node`` names, if it is one (casts looked through)."""
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if isinstance(node, ast.ParamRef):
            index = int(node.number or 0) - 1
            return (
                self.function.arguments[index]
                if 0 <= index < len(self.function.arguments)
                else None
            )
        if isinstance(node, ast.ColumnRef) and len(node.fields or ()) == 1:
            only: Any = (node.fields or ())[0]
            if isinstance(only, ast.String) and only.sval in self.function.arguments:
                return str(only.sval)
        return None

    def column_of(self, node: Any, scope: _Scope) -> tuple[str, str] | None:
        """(alias, column) when ``node`` is a column of a relation of ``scope``."""
        while isinstance(node, ast.TypeCast):
            node = node.arg
        if not isinstance(node, ast.ColumnRef) or not all(
            isinstance(part, ast.String) for part in node.fields or ()
        ):
            return None
        parts = [str(part.sval) for part in node.fields or ()]
        if len(parts) == 2 and parts[0] in scope.relations:
            return parts[0], parts[1]
        if len(parts) == 1 and parts[0] not in self.variables and len(scope.relations) == 1:
            return next(iter(scope.relations)), parts[0]
        return None

    def is_column(self, node: Any, scopes: list[_Scope]) -> bool:
        return any(self.column_of(node, scope) is not None for scope in scopes)

    def check(self, sql: str) -> None:
        for raw in pglast.parse_sql(sql):
            self.visit(raw.stmt, [], set())

    # Statements open a scope; everything else is walked through.
    def visit(self, node: Any, scopes: list[_Scope], ctes: set[str]) -> None:
        if isinstance(node, tuple | list):
            for item in node:
                self.visit(item, scopes, ctes)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SelectStmt | ast.UpdateStmt | ast.DeleteStmt | ast.InsertStmt):
            self.statement(node, scopes, ctes)
            return
        if isinstance(node, ast.FuncCall):
            self.call(node, scopes)
        for child in _children(node):
            self.visit(child, scopes, ctes)

    def statement(self, node: Any, scopes: list[_Scope], ctes: set[str]) -> None:
        with_clause = getattr(node, "withClause", None)
        if with_clause is not None:
            ctes = ctes | {str(cte.ctename) for cte in with_clause.ctes}
        scope = _Scope()
        conditions: list[Any] = []
        direct: list[ast.RangeVar] = []
        if isinstance(node, ast.SelectStmt):
            self._from(node.fromClause, direct, conditions)
            conditions.extend(_conjuncts(node.whereClause))
        elif isinstance(node, ast.UpdateStmt):
            assert node.relation is not None
            direct.append(node.relation)
            self._from(node.fromClause, direct, conditions)
            conditions.extend(_conjuncts(node.whereClause))
            scope.update_of = node.relation.relname
        elif isinstance(node, ast.DeleteStmt):
            assert node.relation is not None
            direct.append(node.relation)
            self._from(node.usingClause, direct, conditions)
            conditions.extend(_conjuncts(node.whereClause))
        else:
            direct.append(node.relation)
        for relation in direct:
            if relation.relname in ctes and relation.schemaname is None:
                continue
            alias = relation.alias.aliasname if relation.alias is not None else relation.relname
            scope.relations[str(alias)] = str(relation.relname)
        for alias, table in scope.relations.items():
            self.tables.add(table)
            scope.pinned[alias] = self._pinned(node, alias, scope, conditions)
        self._require(node, scope)
        for name in type(node).__slots__:
            if name == "withClause" and with_clause is not None:
                for cte in with_clause.ctes:
                    self.visit(cte.ctequery, [*scopes, scope], ctes)
                continue
            self.visit(getattr(node, name), [*scopes, scope], ctes)

    def _from(self, items: Any, direct: list[ast.RangeVar], conditions: list[Any]) -> None:
        for item in items or ():
            if isinstance(item, ast.RangeVar):
                direct.append(item)
            elif isinstance(item, ast.JoinExpr):
                self._from((item.larg, item.rarg), direct, conditions)
                conditions.extend(_conjuncts(item.quals))

    def _pinned(self, node: Any, alias: str, scope: _Scope, conditions: list[Any]) -> set[str]:
        keys = dict(self.plan.keys)
        pinned = set()
        for condition in conditions:
            if not (
                isinstance(condition, ast.A_Expr)
                and condition.kind == pglast.enums.A_Expr_Kind.AEXPR_OP
                and [str(part.sval) for part in condition.name or ()] == ["="]
            ):
                continue
            for left, right in (
                (condition.lexpr, condition.rexpr),
                (condition.rexpr, condition.lexpr),
            ):
                column = self.column_of(left, scope)
                argument = self.argument_of(right)
                if (
                    column is not None
                    and column[0] == alias
                    and argument is not None
                    and keys.get(column[1]) == argument
                ):
                    pinned.add(column[1])
        if isinstance(node, ast.InsertStmt) and node.cols is not None:
            columns = [str(target.name) for target in node.cols]
            rows: list[Any] = []
            select = node.selectStmt
            if isinstance(select, ast.SelectStmt) and select.valuesLists:
                rows = [list(row) for row in select.valuesLists]
            elif isinstance(select, ast.SelectStmt) and select.targetList:
                rows = [[target.val for target in select.targetList]]
            for column_name, argument in keys.items():
                if column_name in columns and rows:
                    at = columns.index(column_name)
                    if all(at < len(row) and self.argument_of(row[at]) == argument for row in rows):
                        pinned.add(column_name)
        return pinned

    def _require(self, node: Any, scope: _Scope) -> None:
        if self.plan.call is not Call.ONE_CUSTOMER:
            return
        verb = {
            ast.SelectStmt: "SELECT FROM",
            ast.UpdateStmt: "UPDATE",
            ast.DeleteStmt: "DELETE FROM",
            ast.InsertStmt: "INSERT INTO",
        }[type(node)]
        keys = dict(self.plan.keys)
        for alias, table in scope.relations.items():
            table_plan = TABLES.get(table)
            if table_plan is None or table_plan.kind is not Kind.DISTRIBUTED:
                continue
            for column in (TENANT, table_plan.column):
                assert column is not None
                argument = keys.get(column)
                if argument is None:
                    self.found.append(
                        f"{self.name}: {verb} {table} without an argument for {column}"
                    )
                elif column not in scope.pinned[alias]:
                    self.found.append(f"{self.name}: {verb} {table} not by {column} = {argument}")

    def call(self, node: ast.FuncCall, scopes: list[_Scope]) -> None:
        callee_name = str((node.funcname or (ast.String(""),))[-1].sval)
        update_of = scopes[-1].update_of if scopes else None
        if update_of is not None and _kind(update_of) is Kind.DISTRIBUTED:
            volatility = self.volatility.get(callee_name, "i")
            columns = any(self.is_column(arg, scopes[-1:]) for arg in _walk(node.args))
            if volatility == "v":
                self.found.append(f"{self.name}: UPDATE {update_of} calls volatile {callee_name}")
            elif volatility == "s" and columns:
                self.found.append(
                    f"{self.name}: UPDATE {update_of} calls stable {callee_name} with columns"
                )
        callee = self.functions.get(callee_name)
        callee_plan = FUNCTIONS.get(callee_name)
        if callee is None or callee_plan is None:
            return
        self.calls.add(callee_name)
        if self.plan.call is Call.NO_TABLE and callee_plan.call is not Call.NO_TABLE:
            self.found.append(f"{self.name}: planned to touch no table, but calls {callee_name}")
        if self.plan.call is not Call.ONE_CUSTOMER:
            return
        if callee_plan.call is Call.SEVERAL_CUSTOMERS:
            self.found.append(f"{self.name}: calls {callee_name}, which takes several customers")
            return
        keys = dict(self.plan.keys)
        args = list(node.args or ())
        named = {str(arg.name): arg.arg for arg in args if isinstance(arg, ast.NamedArgExpr)}
        for column, callee_argument in callee_plan.keys:
            if callee_argument in named:
                given = named[callee_argument]
            elif callee_argument in callee.arguments and callee.arguments.index(
                callee_argument
            ) < len(args):
                given = args[callee.arguments.index(callee_argument)]
            else:
                self.found.append(f"{self.name}: calls {callee_name} without {callee_argument}")
                continue
            if self.argument_of(given) == keys.get(column):
                continue
            if any(
                (found := self.column_of(given, scope)) is not None
                and found[1] == column
                and column in scope.pinned.get(found[0], set())
                for scope in scopes
            ):
                continue
            self.found.append(
                f"{self.name}: calls {callee_name} with a {column} other than {keys.get(column)}"
            )


def _conjuncts(node: Any) -> list[Any]:
    if node is None:
        return []
    if isinstance(node, ast.BoolExpr) and node.boolop == pglast.enums.BoolExprType.AND_EXPR:
        return [item for arg in node.args or () for item in _conjuncts(arg)]
    return [node]


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for child in _children(node):
            yield from _walk(child)


def _children(node: ast.Node) -> Iterator[Any]:
    slots: Any = getattr(type(node), "__slots__")  # noqa: B009 - each node's fields
    for name in slots:
        yield getattr(node, name)


def function_findings(functions: dict[str, Function], volatility: dict[str, str]) -> list[str]:
    found: list[str] = []
    for name in sorted(functions.keys() - FUNCTIONS.keys()):
        found.append(f"{name}: not in the distribution plan")
    for name in sorted(FUNCTIONS.keys() - functions.keys()):
        found.append(f"{name}: planned, but not in the schema")
    checks: dict[str, _FunctionCheck] = {}
    for name in sorted(functions.keys() & FUNCTIONS.keys()):
        function, plan = functions[name], FUNCTIONS[name]
        for _, argument in plan.keys:
            if argument not in function.arguments:
                found.append(f"{name}: no argument {argument}")
        sql, problems, variables = _statements(function)
        found.extend(problems)
        check = _FunctionCheck(
            function, plan, functions, volatility, variables | set(function.arguments)
        )
        for statement in sql:
            check.check(statement)
        if plan.call is Call.NO_TABLE:
            for table in sorted(check.tables & TABLES.keys()):
                found.append(f"{name}: planned to touch no table, but reads {table}")
        found.extend(check.found)
        checks[name] = check
    for name, check in checks.items():
        if not check.plan.force_delegation:
            continue
        for table in sorted(_reached(name, checks)):
            table_plan = TABLES.get(table)
            if table_plan is None or table_plan.kind is Kind.REFERENCE:
                continue
            if table_plan.kind is not Kind.DISTRIBUTED or _group(table) != CUSTOMERS:
                found.append(f"{name}: force-delegated, but reaches {table}")
    return found


def _reached(name: str, checks: dict[str, _FunctionCheck]) -> set[str]:
    """The tables a function touches, itself or through the functions it calls."""
    seen: set[str] = set()
    tables: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen or current not in checks:
            continue
        seen.add(current)
        tables |= checks[current].tables
        pending.extend(checks[current].calls)
    return tables


def describe(found: set[str]) -> str:
    return json.dumps(sorted(found), indent=1)
