"""Opening a pinned snapshot for reading: validate the request, plan it, and build the loader.

Filter and columns are checked against the snapshot's own schema (not the table's current
one); the filter prunes files through Iceberg's manifests and is applied to each row group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyparsing import ParseException

from pipeline.specs import LoaderConfig, ReadSpec
from pipeline.errors import FilterError
from pipeline.loader import IcebergLoader
from pipeline.rows import RowProfile, RowSource, profile_from_metadata, profile_rows
from pipeline.scan import ScanPlan, plan_scan
from pipeline.snapshots import PinnedSnapshot
from pipeline.tensors import LabelVocabulary, NumericTarget, TensorLayout, declared_classes, layout_for
from pipeline.transform import sandboxed_connection, transform_batch


@dataclass(frozen=True)
class PreparedRead:
    """A validated, planned read of a pinned snapshot, before any rows are decoded."""

    table: Table
    plan: ScanPlan
    layout: TensorLayout
    spec: ReadSpec
    output_schema: pa.Schema

    def source(self, config: LoaderConfig) -> RowSource:
        return RowSource(self.plan, self.spec.sql, config.split, config.split_seed, config.val_fraction)


def snapshot_schema(table: Table, pinned: PinnedSnapshot) -> Schema:
    """The schema the snapshot was written with (columns may have changed since)."""
    snapshot = table.snapshot_by_id(pinned.snapshot_id)
    schema_id = snapshot.schema_id if snapshot is not None else None
    return table.schemas().get(schema_id, table.schema()) if schema_id is not None else table.schema()


def parse_filter(text: str | None, schema: Schema, pinned: PinnedSnapshot) -> BooleanExpression:
    """Parse a PyIceberg filter string and check its columns against the snapshot's schema.

    Raises:
        FilterError: the filter does not parse, or names a column the snapshot lacks.
    """
    if not text or not text.strip():
        return AlwaysTrue()
    try:
        expression = parse(text)
    except ParseException as exc:
        raise FilterError(
            f"cannot parse row filter {text!r} near character {exc.loc + 1}; expected e.g. \"label >= 3 and id < 100\""
        ) from exc
    try:
        bind(schema, expression, case_sensitive=True)
    except ValueError as exc:
        columns = ", ".join(field.name for field in schema.fields)
        raise FilterError(
            f"row filter {text!r} does not fit snapshot {pinned.snapshot_id} of {pinned.table!r} ({exc}); columns: {columns}"
        ) from exc
    return expression


def prepare_read(table: Table, pinned: PinnedSnapshot, spec: ReadSpec) -> PreparedRead:
    """Validate ``spec`` against the snapshot and plan its row groups.

    Without a SQL transform only the label, feature and filter columns are read; with one,
    every column is read and the query's output (tried on no rows first) decides the layout.

    Raises:
        FilterError, LabelError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    schema = snapshot_schema(table, pinned)
    row_filter = parse_filter(spec.row_filter, schema, pinned)
    identifiers = [schema.find_column_name(i) for i in schema.identifier_field_ids]
    if spec.sql:
        plan = plan_scan(table, pinned, schema, row_filter, None)
        empty = pa.RecordBatch.from_pylist([], schema=schema.as_arrow())
        output = transform_batch(sandboxed_connection(), empty, spec.sql).schema
        layout = layout_for(output, table.properties, spec, identifiers)
    else:
        output = schema.as_arrow()
        layout = layout_for(output, table.properties, spec, identifiers)
        plan = plan_scan(table, pinned, schema, row_filter, (layout.label, *layout.features))
    columns = (layout.label, *layout.features)
    return PreparedRead(table, plan, layout, spec, pa.schema([output.field(name) for name in columns]))


def open_loader(
    table: Table,
    pinned: PinnedSnapshot,
    spec: ReadSpec,
    config: LoaderConfig = LoaderConfig(),
    *,
    prepared: PreparedRead | None = None,
) -> IcebergLoader:
    """A loader of ``(features, targets)`` batches over the pinned snapshot.

    Counts every row group's rows first (from metadata when it suffices, else reading only
    the label and filter columns, or running the SQL), which makes ``len()``, the equal split
    across ranks and the label vocabulary exact; then judges the rows with the data gate
    (``pipeline.gate``). Targets are class indices for classification, float32 for regression.

    Raises:
        EmptyDataError: no rows are selected.
        LabelError: the label has nulls or a value outside the declared classes.
        FilterError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    from pipeline.gate import judge

    read = prepared or prepare_read(table, pinned, spec)
    source = read.source(config)
    profile = count_rows(source, read, threads=config.decode_threads)
    judge(profile, read, split=config.split, training=False).raise_if_failed()
    target = label_vocabulary(read, profile) if read.spec.task == "classification" else NumericTarget()
    return IcebergLoader(source, read.layout, target, profile, config)


def count_rows(source: RowSource, read: PreparedRead, *, threads: int = 2, count_classes: bool = False) -> RowProfile:
    """Exact rows per row group of the source, and what the gate and vocabulary need of the label.

    Metadata alone answers for an integer label without filter or SQL, unless the declared
    classes are not a run of integers (then their membership needs the values) or
    ``count_classes`` asks for per-class counts.
    """
    classification = read.spec.task == "classification"
    declared = declared_label_classes(read) if classification else None
    if not count_classes and (declared is None or _integer_run(declared)):
        profile = profile_from_metadata(source, read.layout.label)
        if profile is not None:
            return profile
    return profile_rows(source, read.layout.label, threads, count_values=classification)


def declared_label_classes(read: PreparedRead) -> tuple[str, ...] | None:
    """The label's classes: the read's own (``data.classes``), else the table's ``icetrain.label.classes``."""
    return read.spec.classes if read.spec.classes is not None else declared_classes(read.table.properties)


def label_vocabulary(read: PreparedRead, profile: RowProfile) -> LabelVocabulary:
    """The classes a label maps to.

    The declared classes if there are any (``data.classes``, else the table's property);
    else, for non-negative integer labels known from column statistics, 0..max (labels are
    class indices, as PyTorch expects); else the label values present in the selected rows.
    """
    declared = declared_label_classes(read)
    if profile.class_counts is None:
        assert profile.label_range is not None
        if declared is not None:
            return LabelVocabulary.from_values(np.array([0]), declared)
        return LabelVocabulary(tuple(range(profile.label_range[1] + 1)))
    values = list(profile.class_counts)
    if declared is not None:
        return LabelVocabulary.from_values(np.array(values), declared)
    return LabelVocabulary(tuple(sorted(values)))


def _integer_run(values: tuple[str, ...]) -> bool:
    try:
        numbers = sorted(int(v) for v in values)
    except ValueError:
        return False
    return numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else False
