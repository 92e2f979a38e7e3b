"""From one planned row group to the rows a loader yields: split, SQL transform, tensors.

Everything here runs inside whichever process decodes the row group (the trainer, a thread
of it, or a DataLoader worker), so it only holds picklable state.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.schema import Schema
from pyiceberg.types import IntegerType, LongType

from pipeline.data.scan import ScanPlan, read_row_group
from pipeline.data.split import identifier_keys, position_keys, split_mask
from pipeline.data.tensors import LabelVocabulary, TensorLayout, features_to_tensor, label_values
from pipeline.data.transform import row_local_query, sandboxed_connection, transform_batch
from pipeline.errors import LabelError


@dataclass(frozen=True)
class RowSource:
    """A scan plan plus the per-row steps after it: split selection and the SQL transform.

    The SQL transform runs on each row group separately (it must be row-local: projections,
    filters, expressions; aggregates or ORDER BY would see one row group at a time), which is
    what lets row groups be decoded in parallel and counted exactly. ``only`` keeps just that
    output column of the transform (counting needs the label alone, so reads less).
    ``dictionary`` names text columns read as Parquet dictionaries (categories: only each row
    group's distinct values are decoded and looked up).
    """

    plan: ScanPlan
    sql: str | None = None
    split: str = "all"
    split_seed: int = 0
    val_fraction: float = 0.0
    only: str | None = None
    dictionary: tuple[str, ...] = ()
    _local: threading.local = field(default_factory=threading.local, compare=False, repr=False)
    _arrow_schema: pa.Schema | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.sql and self._arrow_schema is None:
            object.__setattr__(self, "_arrow_schema", self.plan.read_schema.as_arrow())

    def rows(self, unit: int, schema: Schema | None = None, split: str | None = None) -> pa.Table | pa.RecordBatch:
        """Row group ``unit`` after deletes, filter, split and SQL.

        Args:
            schema: narrows the columns read (ignored with SQL, which may use any column).
            split: overrides the source's split ('all' for the label vocabulary).
        """
        batch, positions = read_row_group(
            self.plan, self.plan.row_groups[unit], None if self.sql else schema, self.dictionary
        )
        return self.after_read(unit, batch, positions, split or self.split)

    def after_read(self, unit: int, batch: pa.Table, positions: np.ndarray, split: str) -> pa.Table | pa.RecordBatch:
        """The steps after reading: keep ``split``'s rows, then run the SQL transform."""
        mask = self.split_rows(unit, positions, split, batch)
        if mask is not None:
            batch = batch.filter(pa.array(mask))
        if self.sql:
            query = row_local_query(self.sql, self._arrow_schema, self.only)
            batch = (
                query.run(self._connection(), batch)
                if query is not None
                else transform_batch(self._connection(), batch, self.sql)
            )
        return batch

    def split_rows(
        self, unit: int, positions: np.ndarray, split: str | None = None, batch: pa.Table | None = None
    ) -> np.ndarray | None:
        """Which of row group ``unit``'s rows are in the split (None when all are), by identifier
        values when the plan has a split key (``batch`` must hold those columns), else by file position."""
        split = split or self.split
        if split == "all" or (self.val_fraction <= 0 and split == "train"):
            return None
        if self.val_fraction <= 0:
            return np.zeros(len(positions), dtype=bool)
        if self.plan.split_key:
            assert batch is not None
            keys = identifier_keys(batch, self.plan.split_key)
        else:
            keys = position_keys(self.plan.files[self.plan.row_groups[unit].file_index].salt, positions)
        return split_mask(split, keys, self.split_seed, self.val_fraction)

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """One sandboxed DuckDB connection per thread: a connection serves one query at a time."""
        if not hasattr(self._local, "connection"):
            self._local.connection = sandboxed_connection()
        return self._local.connection

    def __getstate__(self) -> dict[str, object]:
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_local", threading.local())


@dataclass(frozen=True)
class RowProfile:
    """Exact rows per row group (of the source's split) and what is known of the label.

    Either ``class_counts`` (from a pass over the label column; they ignore the split, so
    train and validation loaders share one vocabulary) or, from the table's column
    statistics alone, ``label_range``: the smallest and largest integer label.
    """

    unit_rows: np.ndarray
    class_counts: dict[object, int] | None
    null_labels: int
    label_range: tuple[int, int] | None = None
    nan_labels: int = 0

    @property
    def total_rows(self) -> int:
        return int(self.unit_rows.sum())


def count_nulls(source: RowSource, column: str, threads: int = 2) -> int:
    """How many of the selected rows (filter, deletes, SQL; both splits) hold null in ``column``.

    Used to say how many rows a null feature affects in all, once one row group has shown one.
    """
    plan = source.plan

    def count(unit: int) -> int:
        read, positions = read_row_group(plan, plan.row_groups[unit])
        rows = source.after_read(unit, read, positions, "all")
        return rows.column(column).null_count if column in rows.schema.names else 0

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(count, range(len(plan.row_groups))))


def profile_rows(source: RowSource, label: str, threads: int = 2, *, count_values: bool = True) -> RowProfile:
    """Count each row group's rows and the label's values, reading only the label and filter columns.

    With ``count_values=False`` (a regression target, whose values are not classes) only
    rows, nulls and NaNs are counted.

    Raises:
        LabelError: the label column is missing from the rows (e.g. the SQL dropped it).
    """
    plan = source.plan
    schema = narrowed_schema(plan, (label,))
    counting, schema = _sql_count_query(source, label) or (source, None if source.sql else schema)

    def count(unit: int) -> tuple[int, Counter[object], int, int]:
        read, positions = read_row_group(plan, plan.row_groups[unit], schema)
        everything = counting.after_read(unit, read, positions, "all")
        if label not in everything.schema.names:
            raise LabelError(f"label column {label!r} not found; columns: {', '.join(everything.schema.names)}")
        column = everything.column(label)
        counts: Counter[object] = Counter()
        nans = int(pc.sum(pc.is_nan(column)).as_py() or 0) if pa.types.is_floating(column.type) else 0
        if count_values and column.null_count < len(column):
            for entry in pc.value_counts(column.drop_null()).to_pylist():
                counts[entry["values"]] += int(entry["counts"])
        if source.split == "all":
            selected = everything.num_rows
        elif not source.sql:
            selected = int(source.split_rows(unit, positions, batch=read).sum())
        else:  # the split comes before the SQL, so the query runs again on the split's rows
            selected = counting.after_read(unit, read, positions, source.split).num_rows
        return selected, counts, column.null_count, nans

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(count, range(len(plan.row_groups))))
    totals: Counter[object] = Counter()
    for _, counts, _, _ in results:
        totals.update(counts)
    return RowProfile(
        unit_rows=np.array([rows for rows, _, _, _ in results], dtype=np.int64),
        class_counts=dict(sorted(totals.items(), key=lambda item: str(item[0]))) if count_values else None,
        null_labels=sum(nulls for _, _, nulls, _ in results),
        nan_labels=sum(nans for _, _, _, nans in results),
    )


def profile_from_metadata(source: RowSource, label: str) -> RowProfile | None:
    """Row counts and the label's range without reading any data, when metadata suffices.

    That is the case without a filter or SQL transform, for an integer label whose column
    statistics show no nulls and no negative values: counts come from the Parquet footers
    minus positional deletes (and the split, a function of row positions), the classes from
    the Iceberg manifests' bounds. Returns None otherwise.
    """
    plan = source.plan
    if (
        source.sql
        or plan.row_filter != AlwaysTrue()
        or (plan.split_key and source.split != "all" and source.val_fraction > 0)
    ):
        return None
    field = plan.read_schema.find_field(label)
    if not isinstance(field.field_type, (IntegerType, LongType)):
        return None
    lows, highs, nulls = [], [], 0
    for ref in plan.files:
        data_file = ref.task.file
        lower, upper = (
            (data_file.lower_bounds or {}).get(field.field_id),
            (data_file.upper_bounds or {}).get(field.field_id),
        )
        if lower is None or upper is None:
            return None
        lows.append(from_bytes(field.field_type, lower))
        highs.append(from_bytes(field.field_type, upper))
        nulls += (data_file.null_value_counts or {}).get(field.field_id, 0)
    if nulls or (lows and min(lows) < 0):
        return None
    counts = []
    for unit, group in enumerate(plan.row_groups):
        deleted = plan.files[group.file_index].deleted_positions
        if source.split == "all" and not len(deleted):
            counts.append(group.num_rows)
            continue
        positions = np.arange(group.first_row, group.first_row + group.num_rows, dtype=np.int64)
        if len(deleted):
            positions = positions[~np.isin(positions, deleted, assume_unique=True)]
        mask = source.split_rows(unit, positions)
        counts.append(len(positions) if mask is None else int(mask.sum()))
    label_range = (min(lows), max(highs)) if lows else None
    return RowProfile(np.array(counts, dtype=np.int64), None, 0, label_range)


def piece_tensors(
    source: RowSource,
    layout: TensorLayout,
    vocabulary: LabelVocabulary,
    unit: int,
    start: int,
    stop: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [start, stop) of row group ``unit`` as (features, class indices)."""
    rows = source.rows(unit).slice(start, stop - start)
    batch = rows if isinstance(rows, pa.RecordBatch) else single_batch(rows)
    return features_to_tensor(batch, layout), vocabulary.encode(label_values(batch, layout))


def single_batch(table: pa.Table) -> pa.RecordBatch:
    """One record batch for the bulk conversions (a copy only when the row group came in several chunks)."""
    if table.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    batches = table.to_batches()
    return batches[0] if len(batches) == 1 else table.combine_chunks().to_batches()[0]


def _sql_count_query(source: RowSource, label: str) -> tuple[RowSource, Schema] | None:
    """With a SQL transform, a source that only keeps rows and yields the label, and the narrow
    schema it reads (plus filter and split-key columns); None without SQL or when unclear."""
    if not source.sql:
        return None
    plan = source.plan
    reduced = row_local_query(source.sql, source._arrow_schema, only=label)
    if reduced is None:
        return None
    keep = {*reduced.sources, *plan.filter_columns(), *plan.split_key}
    names = [f.name for f in plan.read_schema.fields]
    return replace(source, only=label), plan.read_schema.select(*[name for name in names if name in keep])


def narrowed_schema(plan: ScanPlan, columns: tuple[str, ...]) -> Schema | None:
    """The read schema narrowed to ``columns`` plus whatever the filter and the split need (None: a column is not read as such)."""
    names = [f.name for f in plan.read_schema.fields]
    if not set(columns) <= set(names):
        return None
    keep = {*columns, *plan.filter_columns(), *plan.split_key}
    return plan.read_schema.select(*[name for name in names if name in keep])
