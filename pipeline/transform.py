"""SQL transforms on DuckDB over a pinned snapshot's rows, sandboxed.

The query sees exactly one relation, ``snapshot``: the pinned rows after filter and
projection. DuckDB runs with external access disabled and its configuration locked, so a
query cannot read files, attach databases, install extensions or write anywhere.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipeline.errors import TransformError

SOURCE_RELATION = "snapshot"

_SANDBOX = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}


def sandboxed_connection() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that cannot touch the file system or the network."""
    return duckdb.connect(":memory:", config=dict(_SANDBOX))


def transform_batch(connection: duckdb.DuckDBPyConnection, rows: pa.RecordBatch, sql: str, batch_size: int = 65536) -> pa.RecordBatch:
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
        raise TransformError(f"SQL transform must be one SELECT over {SOURCE_RELATION}: {_one_line(parsed.get('error_message', 'cannot parse it'))}")
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
    import json

    with duckdb.connect(":memory:", config=dict(_SANDBOX)) as connection:
        return json.loads(connection.execute("select json_serialize_sql(?)", [sql]).fetchall()[0][0])


def _clause_problem(node: dict) -> str:
    source = node.get("from_table") or {}
    if node.get("cte_map", {}).get("map"):
        return "WITH is not supported; write one SELECT over snapshot"
    if source.get("type") != "BASE_TABLE" or str(source.get("table_name", "")).lower() != SOURCE_RELATION or source.get("schema_name") or source.get("catalog_name"):
        return f"it must read FROM {SOURCE_RELATION} only (no other relation, join, table function or subquery)"
    modifiers = {_MODIFIERS.get(m.get("type", ""), m.get("type", "")) for m in node.get("modifiers", [])}
    if modifiers:
        return f"{', '.join(sorted(modifiers))} is not row-local (each row group is transformed on its own)"
    if source.get("sample") or node.get("sample"):
        return "USING SAMPLE / TABLESAMPLE is random, not reproducible"
    if node.get("group_expressions") or node.get("group_sets") or node.get("having") or node.get("aggregate_handling") != "STANDARD_HANDLING":
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
_MODIFIERS = {"ORDER_MODIFIER": "ORDER BY", "LIMIT_MODIFIER": "LIMIT", "LIMIT_PERCENT_MODIFIER": "LIMIT", "DISTINCT_MODIFIER": "DISTINCT"}


def _function_kinds() -> dict[str, set[str]]:
    """Function names by what makes them unfit, from DuckDB's own catalogue (read once)."""
    if not _KINDS:
        with duckdb.connect(":memory:", config=dict(_SANDBOX)) as connection:
            rows = connection.execute("select lower(function_name), function_type, coalesce(stability, '') from duckdb_functions()").fetchall()
        scalar = {name for name, kind, _ in rows if kind in ("scalar", "macro")}
        _KINDS["volatile"] = {name for name, kind, stability in rows if kind in ("scalar", "macro") and stability in ("VOLATILE", "CONSISTENT_WITHIN_QUERY")}
        _KINDS["aggregate"] = {name for name, kind, _ in rows if kind in ("aggregate", "window")} - scalar
        _KINDS["set_returning"] = {"unnest", "unlist", "generate_subscripts"}
    return _KINDS
