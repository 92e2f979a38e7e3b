"""Planning a pinned snapshot into Parquet row groups, and reading one row group exactly.

A row group is the unit of work: small enough to bound memory, large enough to decode in
bulk. Reading one follows PyIceberg's own rules (columns matched by field id, so renamed,
added and widened columns read correctly; positional deletes applied; the row filter
applied after deletes), using PyIceberg's Arrow helpers, which are private API: icetrain pins
PyIceberg below 0.13 for that reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.visitors import bind, extract_field_ids, translate_column_names
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.io.pyarrow import (
    _get_column_projection_values,
    _get_file_format,
    _read_all_delete_files,
    _to_requested_schema,
    expression_to_pyarrow,
    pyarrow_to_schema,
)
from pyiceberg.manifest import DataFileContent, FileFormat
from pyiceberg.schema import Schema, prune_columns
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.types import ListType, MapType

from pipeline.data.filters import bind_to_snapshot, for_planning
from pipeline.data.snapshots import PinnedSnapshot, ancestors
from pipeline.errors import ColumnError, DataFileError, IcetrainError


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of one data file: rows [first_row, first_row + num_rows) of the file."""

    file_index: int
    row_group: int
    first_row: int
    num_rows: int


@dataclass(frozen=True)
class DataFileRef:
    """A data file of the plan with its positional deletes, already read (file positions, sorted)."""

    task: FileScanTask
    deleted_positions: np.ndarray

    @property
    def path(self) -> str:
        return self.task.file.file_path

    @property
    def salt(self) -> int:
        """A stable 63-bit number for this file, used to split rows into train and validation."""
        return int.from_bytes(hashlib.blake2b(self.path.encode(), digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class ScanPlan:
    """Everything needed to read a pinned snapshot's row groups, in any process.

    Attributes:
        files: the data files the (pruned) scan needs, sorted by path.
        row_groups: every row group of those files, in canonical order (file, row group).
        read_schema: the snapshot's schema pruned to the columns read (outputs + filter columns).
        row_filter: the filter bound to the snapshot schema (AlwaysTrue when none), NaN
            ordered above numbers (``pipeline/data/filters.py``).
        split_key: the identifier columns that identify a row for the train/validation
            split (read with every row group); empty: rows are identified by file and position.
        since_snapshot_id: only files appended after this snapshot are planned (incremental).
    """

    pinned: PinnedSnapshot
    metadata: TableMetadata
    io_properties: dict[str, str]
    snapshot_schema: Schema
    read_schema: Schema
    row_filter: BooleanExpression
    files: tuple[DataFileRef, ...]
    row_groups: tuple[RowGroup, ...]
    split_key: tuple[str, ...] = ()
    since_snapshot_id: int | None = None
    _io: list[FileIO] = field(default_factory=list, compare=False, repr=False)
    _projections: dict[tuple[int, tuple[int, ...]], object] = field(default_factory=dict, compare=False, repr=False)

    def io(self) -> FileIO:
        """The FileIO for this process (made lazily: FileIO objects are not shared across processes)."""
        if not self._io:
            self._io.append(load_file_io(self.io_properties, self.metadata.location))
        return self._io[0]

    def filter_columns(self) -> list[str]:
        """The columns the row filter reads."""
        return _bound_filter_columns(self.snapshot_schema, self.row_filter)

    def projections(self) -> dict[tuple[int, tuple[int, ...]], object]:
        """Per-process cache of how each data file's columns map onto a requested schema."""
        return self._projections

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_io"] = []
        state["_projections"] = {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)


def plan_scan(
    table: Table,
    pinned: PinnedSnapshot,
    snapshot_schema: Schema,
    row_filter: BooleanExpression,
    columns: tuple[str, ...] | None,
    split_key: tuple[str, ...] = (),
    since_snapshot_id: int | None = None,
) -> ScanPlan:
    """Plan the snapshot's files (pruned by the filter through manifests and column stats) into row groups.

    Args:
        columns: the output columns to read; None reads every column (for SQL transforms).
        split_key: identifier columns to read as well, for the train/validation split.
        since_snapshot_id: keep only the data files appended after this ancestor snapshot.

    Raises:
        ColumnError: a column is not in the snapshot's schema.
        IcetrainError: the snapshot has equality deletes, which icetrain cannot apply yet.
    """
    bound_filter = bind_to_snapshot(snapshot_schema, row_filter)
    read_schema = _read_schema(snapshot_schema, bound_filter, None if columns is None else (*columns, *split_key))
    scan = table.scan(snapshot_id=pinned.snapshot_id, row_filter=for_planning(bound_filter, table.schema()))
    tasks = sorted(scan.plan_files(), key=lambda task: task.file.file_path)
    if since_snapshot_id is not None:
        appended = _appended_since(table, pinned, since_snapshot_id)
        tasks = [task for task in tasks if task.file.file_path in appended]
    for task in tasks:
        if any(delete.content == DataFileContent.EQUALITY_DELETES for delete in task.delete_files):
            raise IcetrainError(
                f"snapshot {pinned.snapshot_id} of {pinned.table!r} has equality deletes, which icetrain cannot read yet"
            )
        if task.file.file_format != FileFormat.PARQUET:
            raise IcetrainError(
                f"data file {task.file.file_path} is {task.file.file_format}; icetrain reads Parquet only"
            )
    deletes = _read_all_delete_files(table.io, tasks)
    files = tuple(
        DataFileRef(
            task,
            np.unique(
                np.concatenate(
                    [np.asarray(c, dtype=np.int64) for c in deletes.get(task.file.file_path, [])]
                    or [np.empty(0, np.int64)]
                )
            ),
        )
        for task in tasks
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        footers = list(
            pool.map(lambda ref: _row_groups_of(table.io, ref.path, bound_filter, table.metadata, pinned), files)
        )
    row_groups = []
    for file_index, (sizes, kept) in enumerate(footers):
        first = 0
        for index, rows in enumerate(sizes):
            if index in kept:
                row_groups.append(RowGroup(file_index, index, first, rows))
            first += rows
    return ScanPlan(
        pinned=pinned,
        metadata=table.metadata,
        io_properties=dict(table.io.properties),
        snapshot_schema=snapshot_schema,
        read_schema=read_schema,
        row_filter=bound_filter,
        files=files,
        row_groups=tuple(row_groups),
        split_key=split_key,
        since_snapshot_id=since_snapshot_id,
    )


def _appended_since(table: Table, pinned: PinnedSnapshot, since: int) -> set[str]:
    """Paths of the data files appended after ``since`` up to the pinned snapshot.

    Raises:
        ConfigError: ``since`` is not an ancestor of the pinned snapshot.
    """
    from pipeline.errors import ConfigError

    lineage = ancestors(table, pinned.snapshot_id)
    if since not in {snapshot.snapshot_id for snapshot in lineage}:
        raise ConfigError(
            f"data.since_snapshot_id {since} is not an ancestor of snapshot {pinned.snapshot_id} of {pinned.table!r}"
        )
    between = lineage[
        : [snapshot.snapshot_id for snapshot in lineage].index(since)
    ]  # newer than ``since``, up to the pinned one
    if not between:
        return set()
    rewrites = [
        snapshot
        for snapshot in between
        if snapshot.summary is not None and snapshot.summary.operation.value != "append"
    ]
    if rewrites:
        raise ConfigError(
            f"data.since_snapshot_id {since}: snapshot {rewrites[0].snapshot_id} of {pinned.table!r} rewrote files (operation {rewrites[0].summary.operation.value}:"
            " a delete, overwrite or compaction), so the rows appended since cannot be told apart; train on the whole snapshot"
        )
    incremental = table.incremental_append_scan(
        from_snapshot_id_exclusive=since, to_snapshot_id_inclusive=pinned.snapshot_id
    )
    return {task.file.file_path for task in incremental.plan_files()}


@dataclass(frozen=True)
class _FileProjection:
    """How one data file's columns map onto the requested schema (worked out once per file)."""

    file_schema: Schema
    file_read_schema: Schema
    columns: list[str]
    missing_values: dict[int, object]
    predicate: pc.Expression | None
    identical: bool


def _projection(plan: ScanPlan, file_index: int, physical: pa.Schema, wanted: Schema) -> _FileProjection:
    key = (file_index, tuple(sorted(wanted.field_ids)))
    cache = plan.projections()
    if key in cache:
        return cache[key]
    task = plan.files[file_index].task
    format_version = plan.metadata.format_version
    file_schema = pyarrow_to_schema(
        physical,
        plan.metadata.name_mapping(),
        downcast_ns_timestamp_to_us=format_version <= 2,
        format_version=format_version,
    )
    missing_values = _get_column_projection_values(
        task.file, wanted, plan.metadata.schema(), plan.metadata.specs().get(task.file.spec_id), file_schema.field_ids
    )
    file_read_schema = prune_columns(file_schema, _leaf_and_struct_ids(wanted), select_full_types=False)
    predicate = None
    if plan.row_filter != AlwaysTrue():
        translated = translate_column_names(
            plan.row_filter, file_schema, case_sensitive=True, projected_field_values=missing_values
        )
        predicate = expression_to_pyarrow(bind(file_schema, translated, case_sensitive=True), file_schema)
    identical = not missing_values and [(f.field_id, f.name, f.field_type) for f in file_read_schema.fields] == [
        (f.field_id, f.name, f.field_type) for f in wanted.fields
    ]
    projection = _FileProjection(
        file_schema, file_read_schema, [c.name for c in file_read_schema.columns], missing_values, predicate, identical
    )
    cache[key] = projection
    return projection


def read_row_group(
    plan: ScanPlan, group: RowGroup, schema: Schema | None = None, dictionary: tuple[str, ...] = ()
) -> tuple[pa.Table, np.ndarray]:
    """Read one row group with deletes and filter applied.

    Args:
        schema: the columns to return (a subset of ``plan.read_schema`` that keeps the filter
            columns); the plan's read schema by default.
        dictionary: text columns to read as dictionaries (by their name in the file; a renamed
            column is simply read plainly).

    Returns:
        The rows (columns named and typed by the snapshot's schema) and each row's position
        in its data file, which identifies the row for the train/validation split.
    """
    ref = plan.files[group.file_index]
    wanted = schema if schema is not None else plan.read_schema
    with _reading(ref.path, plan.pinned), plan.io().new_input(ref.path).open() as source:
        options: dict[str, Any] = {"pre_buffer": True}
        if dictionary:
            options["dictionary_columns"] = tuple(dictionary)  # hashable: PyIceberg caches the format
        fragment = _get_file_format(FileFormat.PARQUET, **options).make_fragment(source, row_groups=[group.row_group])
        physical = fragment.physical_schema
        projection = _projection(plan, group.file_index, physical, wanted)
        table = fragment.to_table(
            schema=physical, columns=projection.columns, use_threads=False
        )  # the loader decodes row groups in parallel itself
    positions = np.arange(group.first_row, group.first_row + table.num_rows, dtype=np.int64)
    if len(ref.deleted_positions):
        keep = ~np.isin(positions, ref.deleted_positions, assume_unique=True)
        table, positions = table.filter(pa.array(keep)), positions[keep]
    if projection.predicate is not None and table.num_rows:
        keep_mask = pc.fill_null(_evaluate(table, projection.predicate), False)
        table, positions = table.filter(keep_mask), positions[np.asarray(keep_mask)]
    if projection.identical:
        return table.select([f.name for f in wanted.fields]), positions
    batch = table.combine_chunks().to_batches()
    raw = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
    requested = _to_requested_schema(
        wanted, projection.file_read_schema, raw, downcast_ns_timestamp_to_us=plan.metadata.format_version <= 2,
        projected_missing_fields=projection.missing_values, allow_timestamp_tz_mismatch=True,
    )  # fmt: skip
    return pa.Table.from_batches([requested]), positions


def _leaf_and_struct_ids(schema: Schema) -> set[int]:
    """Field ids to project, without list and map ids (their element ids select them), as PyIceberg does."""
    return {i for i in schema.field_ids if not isinstance(schema.find_type(i), (ListType, MapType))}


def _evaluate(table: pa.Table, predicate: pc.Expression) -> pa.ChunkedArray:
    """A filter expression evaluated to a boolean mask (no row dropped yet, so positions stay aligned)."""
    return ds.dataset(table).to_table(columns={"keep": predicate}).column("keep")


def _read_schema(schema: Schema, bound_filter: BooleanExpression, columns: tuple[str, ...] | None) -> Schema:
    if columns is None:
        return schema
    names = list(dict.fromkeys([*columns, *_bound_filter_columns(schema, bound_filter)]))
    known = {f.name for f in schema.fields}
    missing = [name for name in names if name not in known]
    if missing:
        raise ColumnError(
            f"column(s) {', '.join(repr(m) for m in missing)} not found; columns: {', '.join(f.name for f in schema.fields)}"
        )
    return schema.select(*names, case_sensitive=True)


def _bound_filter_columns(schema: Schema, bound_filter: BooleanExpression) -> list[str]:
    if bound_filter == AlwaysTrue():
        return []
    return [schema.find_column_name(field_id) for field_id in sorted(extract_field_ids(bound_filter))]


@contextmanager
def _reading(path: str, pinned: PinnedSnapshot) -> Iterator[None]:
    """Turn a missing or damaged data file into one line naming the file, the table and the snapshot."""
    try:
        yield
    except (OSError, pa.ArrowInvalid) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataFileError(
            f"cannot read data file {path} of {pinned.table} at snapshot {pinned.snapshot_id}: {reason}"
        ) from exc


def _row_groups_of(
    io: FileIO, path: str, bound_filter: BooleanExpression, metadata: TableMetadata, pinned: PinnedSnapshot
) -> tuple[list[int], set[int]]:
    """Every row group's size, and the row groups whose Parquet statistics may match the filter."""
    with _reading(path, pinned), io.new_input(path).open() as source:
        fragment = _get_file_format(FileFormat.PARQUET).make_fragment(source)
        sizes = [group.num_rows for group in fragment.row_groups]
        everything = set(range(len(sizes)))
        if bound_filter == AlwaysTrue():
            return sizes, everything
        physical = fragment.physical_schema
        file_schema = pyarrow_to_schema(physical, metadata.name_mapping(), format_version=metadata.format_version)
        if not extract_field_ids(bound_filter) <= file_schema.field_ids:
            return sizes, everything  # a filter column the file lacks: decide row by row
        translated = translate_column_names(bound_filter, file_schema, case_sensitive=True)
        predicate = expression_to_pyarrow(bind(file_schema, translated, case_sensitive=True), file_schema)
        kept = {group.id for group in fragment.subset(filter=predicate, schema=physical).row_groups}
        return sizes, kept
