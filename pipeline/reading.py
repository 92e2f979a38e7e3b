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

from pipeline.config import LoaderConfig, ReadSpec
from pipeline.errors import EmptyDataError, FilterError, LabelError
from pipeline.loader import IcebergLoader
from pipeline.rows import RowProfile, RowSource, profile_from_metadata, profile_rows
from pipeline.scan import ScanPlan, plan_scan
from pipeline.snapshots import PinnedSnapshot
from pipeline.tensors import LabelVocabulary, TensorLayout, declared_classes, layout_for
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
    """A loader of ``(features, class indices)`` batches over the pinned snapshot.

    Counts every row group's rows and the label's classes first (reading only the label and
    filter columns, or running the SQL), which makes ``len()``, the equal split across ranks
    and the label vocabulary exact.

    Raises:
        EmptyDataError: no rows are selected.
        LabelError: the label has nulls or a value outside the table's declared classes.
        FilterError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    read = prepared or prepare_read(table, pinned, spec)
    source = read.source(config)
    profile = profile_from_metadata(source, read.layout.label) or profile_rows(source, read.layout.label, config.decode_threads)
    check_profile(profile, read, config)
    vocabulary = label_vocabulary(read, profile)
    return IcebergLoader(source, read.layout, vocabulary, profile, config)


def check_profile(profile: RowProfile, read: PreparedRead, config: LoaderConfig) -> None:
    """Refuse data no model should train on: nulls in the label, or no rows at all."""
    pinned = read.plan.pinned
    if profile.null_labels:
        raise LabelError(f"label column {read.layout.label!r} has {profile.null_labels} null values in snapshot {pinned.snapshot_id} of {pinned.table!r}")
    if profile.total_rows == 0:
        asked = f" matching filter {read.spec.row_filter!r}" if read.spec.row_filter else ""
        via = " after the SQL transform" if read.spec.sql else ""
        split = f" in the {config.split!r} split" if config.split != "all" else ""
        raise EmptyDataError(f"snapshot {pinned.snapshot_id} of {pinned.table!r} has no rows{asked}{via}{split}")


def label_vocabulary(read: PreparedRead, profile: RowProfile) -> LabelVocabulary:
    """The classes a label maps to.

    The table's declared classes if it declares them; else, for non-negative integer labels
    known from column statistics, 0..max (labels are class indices, as PyTorch expects);
    else the label values present in the selected rows.
    """
    declared = declared_classes(read.table.properties)
    if profile.class_counts is None:
        assert profile.label_range is not None
        if declared is not None:
            return LabelVocabulary.from_values(np.array([0]), declared)
        return LabelVocabulary(tuple(range(profile.label_range[1] + 1)))
    values = list(profile.class_counts)
    if declared is not None:
        vocabulary = LabelVocabulary.from_values(np.array(values), declared)
        unknown = [v for v in values if v not in vocabulary.classes]
        if unknown:
            raise LabelError(f"label value {unknown[0]!r} is not one of the table's declared classes {list(vocabulary.classes)}")
        return vocabulary
    return LabelVocabulary(tuple(sorted(values)))
