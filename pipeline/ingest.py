"""Appending data to Iceberg tables: one snapshot per append, tagged with who produced it.

The first append creates the table in the same transaction, so a failed first write leaves
no empty table behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.io.pyarrow import UnsupportedPyArrowTypeException
from pyiceberg.table import Table

from pipeline.catalog import split_identifier
from pipeline.errors import IngestError

SOURCE_PROPERTY = "icetrain.source"
RUN_ID_PROPERTY = "icetrain.dagster-run-id"
APPEND_ID_PROPERTY = "icetrain.append-id"


def append_arrow(
    catalog: Catalog,
    identifier: str,
    data: pa.Table,
    *,
    source: str,
    run_id: str | None = None,
    table_properties: Mapping[str, str] | None = None,
    identifier_fields: Sequence[str] = (),
    properties: Mapping[str, str] | None = None,
) -> int:
    """Append an Arrow table as one new snapshot, creating the table on first write.

    Args:
        source: who produced the data (a file path, 'sklearn.datasets.load_digits', ...);
            recorded in the snapshot summary.
        run_id: the orchestrator's run id (Dagster's), recorded in the snapshot summary.
        table_properties: properties set when the table is created (image shapes, classes).
        identifier_fields: columns that identify a row; used when the table is created.
        properties: more entries for the snapshot summary (e.g. the partition a run wrote).

    Returns:
        The id of the snapshot this append committed.

    Raises:
        IngestError: no rows, a schema that does not match the table, or a commit conflict
            that outlasted PyIceberg's retries. Nothing is committed in any of these cases.
    """
    if data.num_rows == 0:
        raise IngestError(f"nothing to append to {identifier!r}: the data has no rows")
    append_id = uuid.uuid4().hex
    summary = {**(properties or {}), SOURCE_PROPERTY: source, APPEND_ID_PROPERTY: append_id}
    if run_id:
        summary[RUN_ID_PROPERTY] = run_id
    try:
        if catalog.table_exists(identifier):
            table = catalog.load_table(identifier)
            table.append(data, snapshot_properties=summary)
        else:
            table = _create_with_first_append(catalog, identifier, data, summary, table_properties, identifier_fields)
    except CommitFailedException as exc:
        raise IngestError(f"append to {identifier!r} conflicted with concurrent commits; nothing was written, retry: {exc}") from exc
    except (ValueError, TypeError, pa.ArrowInvalid, UnsupportedPyArrowTypeException) as exc:
        raise IngestError(f"cannot append to {identifier!r}: {_explain(catalog, identifier, data, exc)}") from exc
    return _snapshot_with_append_id(table, append_id)


def append_file(catalog: Catalog, identifier: str, path: str | Path, *, run_id: str | None = None, identifier_fields: Sequence[str] = ()) -> int:
    """Append a Parquet or CSV file as one snapshot; the source recorded is the file path.

    ``identifier_fields`` name the columns that identify a row when the first append creates
    the table (they keep train/validation splits stable across file rewrites).

    Raises:
        IngestError: the file is missing, of an unknown kind, unreadable, or does not fit the table.
    """
    file = Path(path)
    if not file.is_file():
        raise IngestError(f"cannot append {str(file)!r} to {identifier!r}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            data = pq.read_table(file)
        elif suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            data = pa_csv.read_csv(file, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
            data = _conform_to_table(catalog, identifier, data)
        else:
            raise IngestError(f"cannot append {str(file)!r}: only .parquet and .csv files are supported")
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestError(f"cannot read {str(file)!r}: {_first_line(exc)}") from exc
    return append_arrow(catalog, identifier, data, source=str(file.resolve()), run_id=run_id, identifier_fields=identifier_fields)


def schema_difference(table_schema: pa.Schema, data_schema: pa.Schema) -> str:
    """What differs between a table's columns and the data's, by name and type; empty if they fit."""
    table_types = {f.name: _plain(f.type) for f in table_schema}
    data_types = {f.name: _plain(f.type) for f in data_schema}
    problems = [f"{name}: missing from the data" for name in table_types if name not in data_types]
    problems += [f"{name}: not a column of the table" for name in data_types if name not in table_types]
    problems += [
        f"{name}: table has {table_types[name]}, data has {data_types[name]}"
        for name in table_types
        if name in data_types and not data_types[name].equals(table_types[name])
    ]
    problems += [
        f"{field.name}: the table requires values, the data's column is nullable"
        for field in table_schema
        if not field.nullable and field.name in data_types and data_schema.field(field.name).nullable
    ]
    return "; ".join(problems)


def _plain(data_type: pa.DataType) -> pa.DataType:
    """Fold Arrow's large variants into the plain ones: Iceberg does not tell them apart."""
    if pa.types.is_large_string(data_type):
        return pa.string()
    if pa.types.is_large_binary(data_type):
        return pa.binary()
    if pa.types.is_large_list(data_type):
        return pa.list_(_plain(data_type.value_type))
    return data_type


def _conform_to_table(catalog: Catalog, identifier: str, data: pa.Table) -> pa.Table:
    """Cast CSV columns (whose types are only inferred) to an existing table's types, where names match."""
    if not catalog.table_exists(identifier):
        return data
    target = catalog.load_table(identifier).schema().as_arrow()
    if sorted(target.names) != sorted(data.column_names):
        return data
    try:
        return data.select(target.names).cast(pa.schema([pa.field(f.name, f.type, f.nullable) for f in target]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise IngestError(f"cannot append to {identifier!r}: CSV columns do not convert to the table's types: {_first_line(exc)}") from exc


def _create_with_first_append(
    catalog: Catalog,
    identifier: str,
    data: pa.Table,
    summary: dict[str, str],
    table_properties: Mapping[str, str] | None,
    identifier_fields: Sequence[str],
) -> Table:
    namespace, _ = split_identifier(identifier)
    data = _required(data, identifier, identifier_fields)
    catalog.create_namespace_if_not_exists(namespace)
    with catalog.create_table_transaction(identifier, schema=data.schema, properties=dict(table_properties or {})) as tx:
        if identifier_fields:
            with tx.update_schema() as update:
                update.set_identifier_fields(*identifier_fields)
        tx.append(data, snapshot_properties=summary)
    return catalog.load_table(identifier)


def _required(data: pa.Table, identifier: str, identifier_fields: Sequence[str]) -> pa.Table:
    """The data with its identifier columns marked required, as Iceberg demands of identifier fields.

    Raises:
        IngestError: an identifier column is missing or has nulls.
    """
    for name in identifier_fields:
        if name not in data.column_names:
            raise IngestError(f"cannot create {identifier!r}: identifier column {name!r} is not in the data; columns: {', '.join(data.column_names)}")
        if data.column(name).null_count:
            raise IngestError(f"cannot create {identifier!r}: identifier column {name!r} has {data.column(name).null_count} null values")
    schema = pa.schema([f.with_nullable(False) if f.name in identifier_fields else f for f in data.schema], metadata=data.schema.metadata)
    return data.cast(schema) if schema != data.schema else data


def _explain(catalog: Catalog, identifier: str, data: pa.Table, exc: BaseException) -> str:
    """PyIceberg's schema mismatch is a multi-line table; say it in one line instead."""
    if catalog.table_exists(identifier):
        difference = schema_difference(catalog.load_table(identifier).schema().as_arrow(), data.schema)
        if difference:
            return f"schema does not match the table: {difference}"
    return _first_line(exc)


def _snapshot_with_append_id(table: Table, append_id: str) -> int:
    for snapshot in reversed(table.snapshots()):
        if snapshot.summary and snapshot.summary.additional_properties.get(APPEND_ID_PROPERTY) == append_id:
            return snapshot.snapshot_id
    raise IngestError(f"append to {table.name()} committed but its snapshot was not found")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
