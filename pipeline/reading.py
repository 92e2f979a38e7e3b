"""Reading a pinned snapshot: a filtered, projected stream of Arrow record batches.

Filter and projection are validated against the snapshot's own schema (not the table's
current one) and pushed into the Iceberg scan; an optional SQL transform runs on the stream.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyparsing import ParseException

from pipeline.config import ReadSpec
from pipeline.errors import EmptyDataError, FilterError
from pipeline.snapshots import PinnedSnapshot
from pipeline.tensors import TensorLayout, features_to_tensor, label_values, layout_for
from pipeline.transform import transform


@dataclass(frozen=True)
class SnapshotStream:
    """An open stream of a pinned snapshot's rows and the tensor layout they map to."""

    batches: pa.RecordBatchReader
    layout: TensorLayout


@dataclass(frozen=True)
class TensorData:
    """A pinned snapshot's rows as tensors, with the raw label values and a content digest."""

    features: torch.Tensor
    labels: np.ndarray
    layout: TensorLayout
    schema: pa.Schema
    digest: str

    @property
    def num_rows(self) -> int:
        return int(self.features.shape[0])


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


def open_stream(table: Table, pinned: PinnedSnapshot, spec: ReadSpec) -> SnapshotStream:
    """Open a stream of the pinned snapshot's rows, filtered, projected and transformed.

    Without a SQL transform only the label and feature columns are read; with one, every
    column is read and the query's output decides the layout.

    Raises:
        FilterError, LabelError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    schema = snapshot_schema(table, pinned)
    row_filter = parse_filter(spec.row_filter, schema, pinned)
    identifiers = [schema.find_column_name(i) for i in schema.identifier_field_ids]
    properties = table.properties
    if spec.sql:
        scan = table.scan(snapshot_id=pinned.snapshot_id, row_filter=row_filter)
        batches = transform(scan.to_arrow_batch_reader(), spec.sql, spec.batch_size)
        layout = layout_for(batches.schema, properties, spec, identifiers)
        return SnapshotStream(batches, layout)
    layout = layout_for(schema.as_arrow(), properties, spec, identifiers)
    scan = table.scan(
        snapshot_id=pinned.snapshot_id,
        row_filter=row_filter,
        selected_fields=(layout.label, *layout.features),
    )
    return SnapshotStream(scan.to_arrow_batch_reader(), layout)


def read_tensors(table: Table, pinned: PinnedSnapshot, spec: ReadSpec) -> TensorData:
    """Read the pinned snapshot into memory as tensors (the walking skeleton's small-table path).

    Raises:
        EmptyDataError: no rows remain after filter and transform.
        FilterError, LabelError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    stream = open_stream(table, pinned, spec)
    features, labels = [], []
    digest = hashlib.sha256()
    for batch in stream.batches:
        if batch.num_rows == 0:
            continue
        batch_features = features_to_tensor(batch, stream.layout)
        batch_labels = label_values(batch, stream.layout)
        digest.update(batch_features.numpy().tobytes())
        digest.update(_label_bytes(batch_labels))
        features.append(batch_features)
        labels.append(batch_labels)
    if not features:
        asked = f" matching filter {spec.row_filter!r}" if spec.row_filter else ""
        via = " after the SQL transform" if spec.sql else ""
        raise EmptyDataError(f"snapshot {pinned.snapshot_id} of {pinned.table!r} has no rows{asked}{via}")
    return TensorData(
        features=torch.cat(features),
        labels=np.concatenate(labels),
        layout=stream.layout,
        schema=stream.batches.schema,
        digest=digest.hexdigest()[:16],
    )


def _label_bytes(labels: np.ndarray) -> bytes:
    """Label values as bytes for the digest; strings go through a fixed-width unicode array."""
    if labels.dtype.kind in "OUS":
        return labels.astype("U").tobytes()
    return np.ascontiguousarray(labels).tobytes()
