"""Opening a pinned snapshot for reading: validate the request, plan it, and build the loader.

Filter and columns are checked against the snapshot's own schema (not the table's current
one); the filter prunes files through Iceberg's manifests and is applied to each row group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import IntegerType, LongType
from pyparsing import ParseException

from pipeline.data.encoding import is_text
from pipeline.data.rows import RowProfile, RowSource, profile_from_metadata, profile_rows
from pipeline.data.scan import ScanPlan, plan_scan
from pipeline.data.snapshots import PinnedSnapshot, schema_at
from pipeline.data.specs import LoaderConfig, ReadSpec
from pipeline.data.tensors import LabelVocabulary, TensorLayout, declared_classes, layout_for
from pipeline.data.transform import check_transform, referenced_columns, sandboxed_connection, transform_batch
from pipeline.errors import ConfigError, FilterError


@dataclass(frozen=True)
class PreparedRead:
    """A validated, planned read of a pinned snapshot, before any rows are decoded."""

    table: Table
    plan: ScanPlan
    layout: TensorLayout
    spec: ReadSpec
    output_schema: pa.Schema

    def source(self, config: LoaderConfig) -> RowSource:
        return RowSource(
            self.plan, self.spec.sql, config.split, config.split_seed, config.val_fraction, dictionary=self.dictionary
        )

    @property
    def dictionary(self) -> tuple[str, ...]:
        """The text categories read as Parquet dictionaries: not with SQL, not a filter or split-key column."""
        if self.spec.sql:
            return ()
        busy = {*self.plan.filter_columns(), *self.plan.split_key}
        return tuple(
            name
            for name in self.layout.categorical
            if name not in busy and is_text(self.output_schema.field(name).type)
        )


def snapshot_schema(table: Table, pinned: PinnedSnapshot) -> Schema:
    """The schema the snapshot was written with (columns may have changed since)."""
    return schema_at(table, pinned.snapshot_id)


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
            f'cannot parse row filter {text!r} near character {exc.loc + 1}; expected e.g. "label >= 3 and id < 100"'
        ) from exc
    except (ValueError, TypeError) as exc:  # PyIceberg's parser builds expressions it then rejects (``x < 5 or true``)
        raise FilterError(
            f'cannot use row filter {text!r}: {_first_line(exc)}; expected e.g. "label >= 3 and id < 100"'
        ) from exc
    try:
        bind(schema, expression, case_sensitive=True)
    except (ValueError, TypeError) as exc:
        columns = ", ".join(field.name for field in schema.fields)
        raise FilterError(
            f"row filter {text!r} does not fit snapshot {pinned.snapshot_id} of {pinned.table!r} ({_first_line(exc)}); columns: {columns}"
        ) from exc
    return expression


def prepare_read(table: Table, pinned: PinnedSnapshot, spec: ReadSpec) -> PreparedRead:
    """Validate ``spec`` against the snapshot and plan its row groups.

    Without a SQL transform only the label, feature and filter columns are read; with one,
    the columns the query names (every column for ``*``), and the query's output (tried on
    no rows first) decides the layout.

    Raises:
        FilterError, LabelError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    schema = snapshot_schema(table, pinned)
    row_filter = parse_filter(spec.row_filter, schema, pinned)
    identifiers = [schema.find_column_name(i) for i in schema.identifier_field_ids]
    split_key = split_key_for(spec, identifiers, pinned)
    if spec.sql:
        check_transform(spec.sql)
        read_columns = referenced_columns(spec.sql, [field.name for field in schema.fields])
        plan = plan_scan(table, pinned, schema, row_filter, read_columns, split_key, spec.since_snapshot_id)
        empty = pa.RecordBatch.from_pylist([], schema=schema.as_arrow())
        output = transform_batch(sandboxed_connection(), empty, spec.sql).schema
        layout = layout_for(output, table.properties, spec, identifiers)
    else:
        output = schema.as_arrow()
        layout = layout_for(output, table.properties, spec, identifiers)
        plan = plan_scan(
            table, pinned, schema, row_filter, (layout.label, *layout.features), split_key, spec.since_snapshot_id
        )
    columns = (layout.label, *layout.features)
    return PreparedRead(table, plan, layout, spec, pa.schema([output.field(name) for name in columns]))


def split_key_for(spec: ReadSpec, identifiers: list[str], pinned: PinnedSnapshot) -> tuple[str, ...]:
    """The columns that identify a row for the train/validation split (empty: file and position).

    Raises:
        ConfigError: ``split_by='identifier'`` on a table without identifier fields.
    """
    if spec.split_by == "position":
        return ()
    if not identifiers and spec.split_by == "identifier":
        raise ConfigError(
            f"data.split_by=identifier, but table {pinned.table!r} has no identifier fields; use position or auto"
        )
    return tuple(identifiers)


def count_rows(source: RowSource, read: PreparedRead, *, threads: int = 2, count_classes: bool = False) -> RowProfile:
    """Exact rows per row group of the source, and what the gate and vocabulary need of the label.

    Metadata alone answers for an integer label without filter or SQL, unless the declared
    classes are not a run of integers (then their membership needs the values) or
    ``count_classes`` asks for per-class counts.
    """
    classification = read.spec.task == "classification"
    declared = declared_label_classes(read) if classification else None
    if not count_classes and (declared is None or integer_run(declared) is not None):
        profile = profile_from_metadata(source, read.layout.label)
        if profile is not None:
            return profile
    return profile_rows(source, read.layout.label, threads, count_values=classification)


def declared_label_classes(read: PreparedRead) -> tuple[str, ...] | None:
    """The label's classes: the read's own (``data.classes``), else the table's ``icetrain.label.classes``."""
    return read.spec.classes if read.spec.classes is not None else declared_classes(read.table.properties)


def label_vocabulary(read: PreparedRead, profile: RowProfile) -> LabelVocabulary:
    """The classes a label maps to, fixed by the snapshot, never by which rows a filter keeps.

    The declared classes if there are any (``data.classes``, which a replay takes from the run
    it replays, else the table's property); else, for non-negative integer labels, 0..max
    where max is the largest label in the whole snapshot (labels are class indices, as
    PyTorch expects); else the label values present in the whole snapshot. With a SQL
    transform that computes the label, the values the transform yields.
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
    if values and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        highest = max(max(values), _snapshot_label_maximum(read))
        return LabelVocabulary(tuple(range(highest + 1)))
    if read.plan.row_filter != AlwaysTrue() and not read.spec.sql:
        values = list(_snapshot_label_values(read))
    return LabelVocabulary(tuple(sorted(values)))


def _snapshot_label_maximum(read: PreparedRead) -> int:
    """The largest integer label in the pinned snapshot's files (from manifest bounds; -1 when unknown)."""
    if read.spec.sql:
        return -1
    field = read.plan.snapshot_schema.find_field(read.layout.label)
    if not isinstance(field.field_type, (IntegerType, LongType)):
        return -1
    highest = -1
    for task in read.table.scan(snapshot_id=read.plan.pinned.snapshot_id).plan_files():
        upper = (task.file.upper_bounds or {}).get(field.field_id)
        if upper is not None:
            highest = max(highest, int(from_bytes(field.field_type, upper)))
    return highest


def _snapshot_label_values(read: PreparedRead) -> tuple[object, ...]:
    """The distinct label values of the whole pinned snapshot (one pass over the label column, no filter)."""
    schema = read.plan.snapshot_schema
    plan = plan_scan(read.table, read.plan.pinned, schema, AlwaysTrue(), (read.layout.label,))
    profile = profile_rows(RowSource(plan), read.layout.label)
    return tuple(profile.class_counts or ())


def integer_run(values: tuple[str, ...]) -> list[int] | None:
    """The values as integers when they are a run without gaps (``0, 1, 2``), else None."""
    try:
        numbers = sorted(int(v) for v in values)
    except ValueError:
        return None
    return numbers if numbers and numbers == list(range(numbers[0], numbers[0] + len(numbers))) else None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return text or type(exc).__name__
