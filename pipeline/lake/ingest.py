"""Appending data to Iceberg tables: one snapshot per append, tagged with who produced it.

The first append creates the table in the same transaction, so a failed first write leaves
no empty table behind.
"""

from __future__ import annotations

import itertools
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io.pyarrow import UnsupportedPyArrowTypeException
from pyiceberg.table import Table
from sqlalchemy.exc import IntegrityError

from pipeline.errors import IngestError
from pipeline.lake.catalog import split_identifier
from pipeline.lake.contract import check_contract
from pipeline.names import check_table_name

SOURCE_PROPERTY = "icetrain.source"
RUN_ID_PROPERTY = "icetrain.dagster-run-id"
APPEND_ID_PROPERTY = "icetrain.append-id"
APPEND_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
COMMIT_DEADLINE_S = 300.0
# PyIceberg's own retries of a conflicting commit, set on tables icetrain creates; whole
# attempts are retried on top of these until the deadline.
COMMIT_RETRY_PROPERTIES = {
    "commit.retry.num-retries": "8",
    "commit.retry.min-wait-ms": "20",
    "commit.retry.max-wait-ms": "1000",
}
# Appends merge small manifests, so planning does not grow with every append (see pipeline.lake.maintenance).
NEW_TABLE_PROPERTIES = {
    **COMMIT_RETRY_PROPERTIES,
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
}
CONFLICTS = (CommitFailedException, CommitStateUnknownException, TableAlreadyExistsError, NamespaceAlreadyExistsError)


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
    append_id: str | None = None,
    deadline_s: float = COMMIT_DEADLINE_S,
    check: bool = True,
) -> int:
    """Append an Arrow table as one new snapshot, creating the table on first write.

    Concurrent writers are expected: a commit that conflicts is retried (PyIceberg's own
    retries, then whole attempts with jittered exponential backoff) until ``deadline_s``; a
    table created by someone else in the meantime is appended to. Before every attempt the
    table's history is searched for ``append_id``, so an attempt whose outcome was unclear is
    never committed twice, and neither is a whole ingest re-run with the same ``append_id``.

    Args:
        source: who produced the data (a file path, 'sklearn.datasets.load_digits', ...);
            recorded in the snapshot summary.
        run_id: the orchestrator's run id (Dagster's), recorded in the snapshot summary.
        table_properties: properties set when the table is created (image shapes, classes).
        identifier_fields: columns that identify a row; used when the table is created.
        properties: more entries for the snapshot summary (e.g. the partition a run wrote).
        append_id: names this append (``icetrain.append-id`` in the summary); a random one
            if not given. An append id already in the table returns that snapshot, writing nothing.
        deadline_s: how long to keep retrying conflicting commits.
        check: check the data against an existing table's contract first (``pipeline.lake.contract``).

    Returns:
        The id of the snapshot holding this append.

    Raises:
        InvalidNameError: the table name could hurt the catalog or warehouse.
        IngestError: no rows, a schema that does not match the table, data that breaks its
            contract, or commits that kept conflicting until the deadline. Nothing is committed
            in any of these cases.
    """
    check_table_name(identifier)
    if data.num_rows == 0:
        raise IngestError(f"nothing to append to {identifier!r}: the data has no rows")
    named = append_id is not None
    append_id = check_append_id(append_id) if append_id is not None else uuid.uuid4().hex
    summary = {**(properties or {}), SOURCE_PROPERTY: source, APPEND_ID_PROPERTY: append_id}
    if run_id:
        summary[RUN_ID_PROPERTY] = run_id
    give_up = time.monotonic() + deadline_s
    for attempt in itertools.count():
        landed = (
            find_append(catalog, identifier, append_id) if named or attempt else None
        )  # a fresh random id cannot be there yet
        if landed is not None:
            return landed
        try:
            table = _append_once(catalog, identifier, data, summary, table_properties, identifier_fields, check)
            return _snapshot_with_append_id(table, append_id)
        except CONFLICTS as exc:
            if time.monotonic() >= give_up:
                landed = find_append(catalog, identifier, append_id)
                if landed is not None:
                    return landed
                raise IngestError(
                    f"append to {identifier!r} kept conflicting with concurrent commits for {deadline_s:.0f}s ({attempt + 1} attempts);"
                    f" nothing was written; re-run with append id {append_id!r} to be safe ({_first_line(exc)})"
                ) from exc
            time.sleep(backoff(attempt))
        except (ValueError, TypeError, pa.ArrowInvalid, UnsupportedPyArrowTypeException) as exc:
            raise IngestError(f"cannot append to {identifier!r}: {_explain(catalog, identifier, data, exc)}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    """Create ``namespace`` unless it exists, also when another writer creates it at the same moment.

    PyIceberg's SQL catalog checks, then inserts: a writer that loses the race gets the
    database's unique-key ``IntegrityError``, not ``NamespaceAlreadyExistsError``.
    """
    try:
        catalog.create_namespace_if_not_exists(namespace)
    except IntegrityError:
        if not catalog.namespace_exists(namespace):
            raise


def find_append(catalog: Catalog, identifier: str, append_id: str) -> int | None:
    """The snapshot that committed ``append_id`` to the table, or None (also when there is no table)."""
    try:
        table = catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        return None
    return appended_by(table, append_id)


def appended_by(table: Table, append_id: str) -> int | None:
    """The snapshot of ``table`` whose summary carries ``append_id`` (the newest), or None."""
    for snapshot in reversed(table.snapshots()):
        if snapshot.summary and snapshot.summary.additional_properties.get(APPEND_ID_PROPERTY) == append_id:
            return snapshot.snapshot_id
    return None


def check_append_id(append_id: str) -> str:
    """An append id is 1-128 letters, digits, '-', '_', '.' or ':' (it goes into snapshot summaries).

    Raises:
        IngestError: it is not.
    """
    if not APPEND_ID.fullmatch(append_id):
        raise IngestError(f"append id {append_id[:80]!r} is not valid: use 1-128 letters, digits, '-', '_', '.' or ':'")
    return append_id


def append_file(
    catalog: Catalog,
    identifier: str,
    path: str | Path,
    *,
    run_id: str | None = None,
    identifier_fields: Sequence[str] = (),
    append_id: str | None = None,
    check: bool = True,
) -> int:
    """Append a Parquet or CSV file as one snapshot; the source recorded is the file path."""
    return append_files(
        catalog,
        identifier,
        [path],
        run_id=run_id,
        identifier_fields=identifier_fields,
        append_id=append_id,
        check=check,
    )


def append_files(
    catalog: Catalog,
    identifier: str,
    paths: Sequence[str | Path],
    *,
    run_id: str | None = None,
    identifier_fields: Sequence[str] = (),
    append_id: str | None = None,
    check: bool = True,
) -> int:
    """Append Parquet or CSV files together as one snapshot: all of them are committed, or none.

    Every file is read and checked against the table (and the others) before anything is
    written. ``identifier_fields`` name the columns that identify a row when the first append
    creates the table (they keep train/validation splits stable across file rewrites).

    Raises:
        IngestError: a file is missing, of an unknown kind, unreadable, or does not fit the
            table or the other files; the message names the file. Nothing is committed.
    """
    check_table_name(identifier)
    if not paths:
        raise IngestError(f"nothing to append to {identifier!r}: no files given")
    files = [Path(path) for path in paths]
    tables = [_read_file(catalog, identifier, file) for file in files]
    if len(tables) > 1:
        tables = [
            table.cast(_nullable(table.schema)) for table in tables
        ]  # files differ in nullability only by accident
        for file, table in zip(files[1:], tables[1:]):
            difference = schema_difference(tables[0].schema, table.schema)
            if difference:
                raise IngestError(
                    f"cannot append {str(file)!r} with {str(files[0])!r} to {identifier!r}: the files differ: {difference}"
                )
    data = pa.concat_tables([table.cast(tables[0].schema) for table in tables]) if len(tables) > 1 else tables[0]
    source = ", ".join(str(file.resolve()) for file in files)
    return append_arrow(
        catalog,
        identifier,
        data,
        source=source[:2000],
        run_id=run_id,
        identifier_fields=identifier_fields,
        append_id=append_id,
        check=check,
    )


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([field.with_nullable(True) for field in schema], metadata=schema.metadata)


def _read_file(catalog: Catalog, identifier: str, file: Path) -> pa.Table:
    if not file.is_file():
        raise IngestError(f"cannot append {str(file)!r} to {identifier!r}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(file)
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            data = pa_csv.read_csv(file, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
            return _conform_to_table(catalog, identifier, data)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:  # a binary file named .csv fails to decode
        raise IngestError(f"cannot read {str(file)!r}: {_first_line(exc)}") from exc
    raise IngestError(f"cannot append {str(file)!r}: only .parquet and .csv files are supported")


def _append_once(
    catalog: Catalog,
    identifier: str,
    data: pa.Table,
    summary: dict[str, str],
    table_properties: Mapping[str, str] | None,
    identifier_fields: Sequence[str],
    check: bool,
) -> Table:
    try:
        table = catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        return _create_with_first_append(catalog, identifier, data, summary, table_properties, identifier_fields)
    if check:
        check_contract(table, data, identifier)
    table.append(_fit_required(data, table, identifier), snapshot_properties=summary)
    return table


def backoff(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: exponential from 50 ms, capped at 2 s, with jitter."""
    return random.uniform(0.5, 1.5) * min(0.05 * 2**attempt, 2.0)


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
        raise IngestError(
            f"cannot append to {identifier!r}: CSV columns do not convert to the table's types: {_first_line(exc)}"
        ) from exc


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
    ensure_namespace(catalog, namespace)
    with catalog.create_table_transaction(
        identifier, schema=data.schema, properties={**NEW_TABLE_PROPERTIES, **(table_properties or {})}
    ) as tx:
        if identifier_fields:
            with tx.update_schema() as update:
                update.set_identifier_fields(*identifier_fields)
        tx.append(data, snapshot_properties=summary)
    return catalog.load_table(identifier)


def _fit_required(data: pa.Table, table: Table, identifier: str) -> pa.Table:
    """The data with the table's required columns marked required, when they hold no nulls.

    Arrow marks every column read from a file nullable; Iceberg refuses such a column for a
    required field (identifier fields are required) even when it has no nulls.

    Raises:
        IngestError: a required column has nulls.
    """
    required = {field.name for field in table.schema().fields if field.required}
    for name in required & set(data.column_names):
        nulls = data.column(name).null_count
        if nulls:
            raise IngestError(
                f"cannot append to {identifier!r}: column {name!r} is required by the table and has {nulls} null values"
            )
    schema = pa.schema(
        [f.with_nullable(False) if f.name in required else f for f in data.schema], metadata=data.schema.metadata
    )
    return data.cast(schema) if schema != data.schema else data


def _required(data: pa.Table, identifier: str, identifier_fields: Sequence[str]) -> pa.Table:
    """The data with its identifier columns marked required, as Iceberg demands of identifier fields.

    Raises:
        IngestError: an identifier column is missing or has nulls.
    """
    for name in identifier_fields:
        if name not in data.column_names:
            raise IngestError(
                f"cannot create {identifier!r}: identifier column {name!r} is not in the data; columns: {', '.join(data.column_names)}"
            )
        if data.column(name).null_count:
            raise IngestError(
                f"cannot create {identifier!r}: identifier column {name!r} has {data.column(name).null_count} null values"
            )
    schema = pa.schema(
        [f.with_nullable(False) if f.name in identifier_fields else f for f in data.schema],
        metadata=data.schema.metadata,
    )
    return data.cast(schema) if schema != data.schema else data


def _explain(catalog: Catalog, identifier: str, data: pa.Table, exc: BaseException) -> str:
    """PyIceberg's schema mismatch is a multi-line table; say it in one line instead."""
    if catalog.table_exists(identifier):
        difference = schema_difference(catalog.load_table(identifier).schema().as_arrow(), data.schema)
        if difference:
            return f"schema does not match the table: {difference}"
    return _first_line(exc)


def _snapshot_with_append_id(table: Table, append_id: str) -> int:
    found = appended_by(table, append_id)
    if found is not None:
        return found
    raise IngestError(f"append to {table.name()} committed but its snapshot was not found")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
