"""SQL transforms on DuckDB over a pinned snapshot's rows, sandboxed.

The query sees exactly one relation, ``snapshot``: the pinned rows after filter and
projection. DuckDB runs with external access disabled and its configuration locked, so a
query cannot read files, attach databases, install extensions or write anywhere.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.errors import TransformError

SOURCE_RELATION = "snapshot"

_SANDBOX = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "threads": 1,
}
# Settings that make DuckDB's time-zone-dependent functions (``hour(timestamptz)``,
# ``timestamptz + interval``, ...) give the same answer on every machine; set before the
# configuration is locked (ICU's options are not accepted at connect time).
_PINNED_SETTINGS = (("TimeZone", "UTC"), ("Calendar", "gregorian"))


def sandboxed_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that cannot touch the file system or the network.

    Its time zone and calendar are pinned (UTC, Gregorian) and its configuration locked, so a
    query gives the same result whatever machine or session runs it.
    """
    connection = duckdb.connect(":memory:", config=dict(_SANDBOX))
    for name, value in _PINNED_SETTINGS:
        connection.execute(f"SET {name} = '{value}'")
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def transform_batch(
    connection: duckdb.DuckDBPyConnection, rows: pa.RecordBatch, sql: str, batch_size: int = 65536
) -> pa.RecordBatch:
    """Run ``sql`` over one bounded batch of rows (a row group) and return its result.

    The result is streamed out of DuckDB in record batches and joined; it is bounded by the
    input row group.

    Raises:
        TransformError: the query fails, is forbidden by the sandbox, or returns no rows relation.
    """
    connection.register(SOURCE_RELATION, rows)
    try:
        relation = connection.sql(sql)
        if relation is None:
            raise TransformError(f"SQL transform must be a query that returns rows, got: {sql.strip()[:80]!r}")
        reader = relation.to_arrow_reader(batch_size)
        result = pa.Table.from_batches(list(reader), schema=reader.schema)
    except duckdb.Error as exc:
        raise TransformError(f"SQL transform failed: {_one_line(exc)}") from exc
    finally:
        connection.unregister(SOURCE_RELATION)
    combined = result.combine_chunks().to_batches()
    return combined[0] if combined else pa.RecordBatch.from_pylist([], schema=result.schema)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def check_transform(sql: str) -> str:
    """Refuse a transform that is not one row-local, deterministic SELECT over ``snapshot``.

    The transform runs on each row group separately and is recorded as reproducible, so it
    may only map each row to at most one row, the same way every time: no second statement,
    no other relation, join, table function, subquery or CTE, no ORDER BY / LIMIT / DISTINCT /
    GROUP BY / HAVING / QUALIFY / SAMPLE, no aggregate, window or set-returning function, and
    no function DuckDB marks as not consistent (``random``, ``uuid``, ``now``, ...).

    Returns:
        The SQL, unchanged.

    Raises:
        TransformError: why the query was refused, in one line.
    """
    parsed = _parse(sql)
    if parsed.get("error") and "Only SELECT" in str(parsed.get("error_message")):
        raise TransformError(f"SQL transform must be a SELECT over {SOURCE_RELATION}, got {sql.strip()[:60]!r}")
    if parsed.get("error"):
        raise TransformError(
            f"SQL transform must be one SELECT over {SOURCE_RELATION}: {_one_line(parsed.get('error_message', 'cannot parse it'))}"
        )
    statements = parsed.get("statements", [])
    if len(statements) != 1:
        raise TransformError(f"SQL transform must be one statement, got {len(statements)}")
    node = statements[0]["node"]
    if node.get("type") != "SELECT_NODE":
        raise TransformError("SQL transform must be a plain SELECT (UNION, INTERSECT and EXCEPT are not row-local)")
    problem = _clause_problem(node) or _expression_problem(node, _function_kinds())
    if problem:
        raise TransformError(f"SQL transform refused: {problem}")
    return sql


def _parse(sql: str) -> dict:
    """DuckDB's parse tree of ``sql`` (a fresh copy: callers may change it)."""
    return json.loads(_parsed_json(sql))


@functools.lru_cache(maxsize=64)
def _parsed_json(sql: str) -> str:
    with sandboxed_connection() as connection:
        return connection.execute("select json_serialize_sql(?)", [sql]).fetchall()[0][0]


def _clause_problem(node: dict) -> str:
    source = node.get("from_table") or {}
    if node.get("cte_map", {}).get("map"):
        return "WITH is not supported; write one SELECT over snapshot"
    if (
        source.get("type") != "BASE_TABLE"
        or str(source.get("table_name", "")).lower() != SOURCE_RELATION
        or source.get("schema_name")
        or source.get("catalog_name")
    ):
        return f"it must read FROM {SOURCE_RELATION} only (no other relation, join, table function or subquery)"
    modifiers = {_MODIFIERS.get(m.get("type", ""), m.get("type", "")) for m in node.get("modifiers", [])}
    if modifiers:
        return f"{', '.join(sorted(modifiers))} is not row-local (each row group is transformed on its own)"
    if source.get("sample") or node.get("sample"):
        return "USING SAMPLE / TABLESAMPLE is random, not reproducible"
    if (
        node.get("group_expressions")
        or node.get("group_sets")
        or node.get("having")
        or node.get("aggregate_handling") != "STANDARD_HANDLING"
    ):
        return "GROUP BY / HAVING aggregates rows; the transform must map each row on its own"
    if node.get("qualify"):
        return "QUALIFY filters by window functions, which are not row-local"
    return ""


def _expression_problem(tree: object, kinds: dict[str, set[str]]) -> str:
    """The first expression anywhere in the tree that is not row-local and deterministic."""
    if isinstance(tree, list):
        return next((p for p in (_expression_problem(item, kinds) for item in tree) if p), "")
    if not isinstance(tree, dict):
        return ""
    kind = tree.get("class")
    if kind == "SUBQUERY":
        return "subqueries are not supported"
    if kind == "WINDOW":
        return f"window function {tree.get('function_name', '')!r} is not row-local"
    if kind == "COLUMN_REF" and [str(n).lower() for n in tree.get("column_names", [])] in ([k] for k in CLOCK_KEYWORDS):
        return f"{tree['column_names'][0]} gives a different result each run, so the run could not be reproduced"
    if kind == "FUNCTION":
        name = str(tree.get("function_name", "")).lower()
        if name in kinds["volatile"]:
            return f"{name}() gives a different result each run, so the run could not be reproduced"
        if name in kinds["aggregate"]:
            return f"aggregate {name}() combines rows; the transform must map each row on its own"
        if name in kinds["set_returning"]:
            return f"{name}() returns several rows per row"
    return next((p for p in (_expression_problem(value, kinds) for value in tree.values()) if p), "")


_KINDS: dict[str, set[str]] = {}
CLOCK_KEYWORDS = ("current_date", "current_time", "current_timestamp", "localtime", "localtimestamp")
_MODIFIERS = {
    "ORDER_MODIFIER": "ORDER BY",
    "LIMIT_MODIFIER": "LIMIT",
    "LIMIT_PERCENT_MODIFIER": "LIMIT",
    "DISTINCT_MODIFIER": "DISTINCT",
}


def _function_kinds() -> dict[str, set[str]]:
    """Function names by what makes them unfit, from DuckDB's own catalogue (read once).

    A name is refused as not deterministic when any overload is ``VOLATILE`` (``random``,
    ``uuid``) or when none is ``CONSISTENT`` (``now``, ``current_setting``). Names with both
    kinds of overload (``+``, ``hour``, ``strftime``: their ``TIMESTAMPTZ`` overloads are
    ``CONSISTENT_WITHIN_QUERY`` because they read the session's time zone) are allowed: the
    sandbox pins the time zone and calendar, which makes those overloads consistent too.
    """
    if not _KINDS:
        with sandboxed_connection() as connection:
            rows = connection.execute(
                "select lower(function_name), function_type, coalesce(stability, '') from duckdb_functions()"
            ).fetchall()
        scalar = {name for name, kind, _ in rows if kind in ("scalar", "macro")}
        consistent = {
            name for name, kind, stability in rows if kind in ("scalar", "macro") and stability == "CONSISTENT"
        }
        _KINDS["volatile"] = {
            name for name, kind, stability in rows if kind in ("scalar", "macro") and stability == "VOLATILE"
        }
        _KINDS["volatile"] |= scalar - consistent
        _KINDS["aggregate"] = {name for name, kind, _ in rows if kind in ("aggregate", "window")} - scalar
        _KINDS["set_returning"] = {"unnest", "unlist", "generate_subscripts"}
    return _KINDS


def referenced_columns(sql: str, columns: Sequence[str]) -> tuple[str, ...] | None:
    """The snapshot columns ``sql`` reads, in ``columns``' order; None when it may read any.

    Reading only these is what keeps a transform over a wide table as cheap as a plain read.
    ``*``, a name that is not a column (a select alias used in WHERE, a lambda parameter) or
    anything unparsable answers None: read every column.
    """
    node = _select_node(sql)
    return None if node is None else _columns_of(node, columns)


ROW_COLUMN = "__icetrain_row"


@dataclass(frozen=True)
class RowLocalQuery:
    """A transform split so that DuckDB only computes, while Arrow moves the columns.

    The query ``SELECT a, b * 2 AS c, label FROM snapshot WHERE id % 10 <> 0`` runs as
    ``SELECT b * 2, <row number> FROM snapshot WHERE ...`` over just ``b`` and ``id``; ``a``
    and ``label`` are taken from the decoded rows by the kept row numbers. Passing columns
    through DuckDB would copy every value in and out; this copies each kept value once.

    Attributes:
        sql: the reduced query: the computed outputs, then the row number of each kept row.
        outputs: each output column's name and the input column it passes through (None: computed).
        columns: the input columns DuckDB reads (the WHERE's and the computed outputs').
        sources: every input column the query needs (``columns`` plus the passed-through ones).
    """

    sql: str
    outputs: tuple[tuple[str, str | None], ...]
    columns: tuple[str, ...]
    sources: tuple[str, ...]

    def run(self, connection: duckdb.DuckDBPyConnection, rows: pa.Table | pa.RecordBatch) -> pa.RecordBatch:
        """The same rows and columns the whole query returns for ``rows``."""
        count = rows.num_rows
        numbers = pa.array(np.arange(count, dtype=np.int64))
        inputs = pa.Table.from_arrays(
            [*(rows.column(name) for name in self.columns), numbers], names=[*self.columns, ROW_COLUMN]
        )
        computed = transform_batch(connection, inputs, self.sql)
        kept = computed.column(computed.num_columns - 1)
        everything = len(kept) == count and np.array_equal(kept.to_numpy(), numbers.to_numpy())
        arrays, position = [], 0
        for _, source in self.outputs:
            if source is None:
                arrays.append(computed.column(position))
                position += 1
            else:
                arrays.append(rows.column(source) if everything else rows.column(source).take(kept))
        table = pa.Table.from_arrays(arrays, names=[name for name, _ in self.outputs])
        batches = table.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def row_local_query(sql: str, schema: pa.Schema, only: str | None = None) -> RowLocalQuery | None:
    """``sql`` split into DuckDB's part and Arrow's part (see ``RowLocalQuery``); None when unsafe.

    Args:
        schema: the columns the transform sees.
        only: keep just this output column (counting rows and labels needs only the label).

    Only plain references to integer, float or boolean columns whose type DuckDB keeps are
    passed through. The reduced query is rebuilt from DuckDB's own parse tree and tried on no
    rows: names and types must match the whole query's, else None (run the whole query).
    """
    return _row_local_query(sql, schema, only)


@functools.lru_cache(maxsize=32)
def _row_local_query(sql: str, schema: pa.Schema, only: str | None) -> RowLocalQuery | None:
    node = _select_node(sql)
    entries = node.get("select_list", []) if node is not None else []
    if not entries or any(entry.get("class") == "STAR" for entry in entries) or ROW_COLUMN in schema.names:
        return None
    with sandboxed_connection() as connection:
        try:
            whole = transform_batch(connection, _empty(schema), sql).schema
        except TransformError:
            return None
        if len(whole) != len(entries):
            return None
        chosen = [i for i in range(len(entries)) if only is None or whole.names[i] == only]
        if only is not None and len(chosen) != 1:
            return None
        outputs, computed = [], []
        for i in chosen:
            source = _passed_through(entries[i], schema, whole.field(i).type)
            outputs.append((whole.names[i], source))
            if source is None:
                computed.append({**entries[i], "alias": f"__icetrain_out{len(computed)}"})
        columns = _columns_of({"where": node.get("where_clause"), "computed": computed}, schema.names)
        if columns is None:
            return None
        row_ref = {
            "class": "COLUMN_REF",
            "type": "COLUMN_REF",
            "alias": "",
            "query_location": 0,
            "query_location_length": 0,
            "column_names": [ROW_COLUMN],
        }
        tree = {
            "error": False,
            "statements": [{"node": {**node, "select_list": [*computed, row_ref]}, "named_param_map": []}],
        }
        try:
            reduced = connection.execute("select json_deserialize_sql(?::JSON)", [json.dumps(tree)]).fetchall()[0][0]
            trial = transform_batch(
                connection,
                _empty(pa.schema([*(schema.field(c) for c in columns), pa.field(ROW_COLUMN, pa.int64())])),
                reduced,
            ).schema
        except (duckdb.Error, TransformError):
            return None
    expected = [whole.field(i).type for i in chosen if outputs[chosen.index(i)][1] is None]
    if trial.types != [*expected, pa.int64()]:
        return None
    sources = tuple(name for name in schema.names if name in set(columns) | {s for _, s in outputs if s})
    return RowLocalQuery(reduced, tuple(outputs), columns, sources)


def _passed_through(entry: dict, schema: pa.Schema, output_type: pa.DataType) -> str | None:
    """The input column a select entry copies unchanged (a plain reference, same fixed-width type), else None."""
    if entry.get("class") != "COLUMN_REF":
        return None
    parts = [str(part) for part in entry.get("column_names", [])]
    if len(parts) == 2 and parts[0].lower() == SOURCE_RELATION:
        parts = parts[1:]
    matches = [name for name in schema.names if len(parts) == 1 and name.lower() == parts[0].lower()]
    if len(matches) != 1:
        return None
    input_type = schema.field(matches[0]).type
    fixed = pa.types.is_integer(input_type) or pa.types.is_floating(input_type) or pa.types.is_boolean(input_type)
    return matches[0] if fixed and input_type == output_type else None


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _select_node(sql: str) -> dict | None:
    parsed = _parse(sql)
    statements = parsed.get("statements", []) if not parsed.get("error") else []
    return (
        statements[0]["node"] if len(statements) == 1 and statements[0]["node"].get("type") == "SELECT_NODE" else None
    )


def _columns_of(tree: object, columns: Sequence[str]) -> tuple[str, ...] | None:
    """Every column a (part of a) parsed query names, in ``columns``' order; None for ``*`` or a name that is not a column."""
    by_lower = {name.lower(): name for name in columns}
    found: set[str] = set()

    def walk(node: object) -> bool:
        if isinstance(node, list):
            return all(walk(item) for item in node)
        if not isinstance(node, dict):
            return True
        if node.get("class") == "STAR":
            return False
        if node.get("class") == "COLUMN_REF":
            named = [
                by_lower[str(part).lower()] for part in node.get("column_names", []) if str(part).lower() in by_lower
            ]
            found.update(named)
            return bool(named)
        return all(walk(value) for key, value in node.items() if key != "from_table")

    if not walk(tree):
        return None
    return tuple(name for name in columns if name in found)
