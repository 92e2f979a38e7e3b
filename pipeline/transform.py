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
