"""Reading a pinned snapshot for scoring: a trained model's features, exactly as it read them, with each row's identifiers.

Scoring reads what training read (``pipeline.data.rows.RowSource``: deletes, the SQL
transform, dictionary-read categories; ``features_to_tensor`` with the run's recorded
encoding), but every row and in canonical order: no split, no shuffle, no rows dropped to
even out ranks. Ranks take row groups round-robin, so across ``world_size`` ranks every row
is scored exactly once. The label need not be there: new rows have no outcome yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import torch
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from pipeline.data.encoding import Encoding, is_text
from pipeline.data.quality import contract_changes
from pipeline.data.reading import snapshot_schema
from pipeline.data.rows import RowSource, single_batch
from pipeline.data.scan import ScanPlan, plan_scan
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.data.specs import ReadSpec
from pipeline.data.tensors import TensorLayout, features_to_tensor, layout_for, model_inputs
from pipeline.data.transform import check_transform, referenced_columns, sandboxed_connection, transform_batch
from pipeline.errors import ColumnError, EmptyDataError


@dataclass(frozen=True)
class ScoringRead:
    """A planned read of a pinned snapshot for scoring, before any rows are decoded.

    Attributes:
        plan: the snapshot's row groups (only those appended since ``since_snapshot_id`` when incremental).
        layout: the model's tensor layout, with its run's encoding.
        sql: the run's SQL transform, run on each row group as in training.
        identifiers: the columns that identify a row (the table's identifier fields), carried into the predictions.
        dictionary: text categories read as Parquet dictionaries.
    """

    plan: ScanPlan
    layout: TensorLayout
    sql: str | None
    identifiers: tuple[str, ...]
    identifier_types: tuple[pa.DataType, ...]
    dictionary: tuple[str, ...]

    @property
    def pinned(self) -> PinnedSnapshot:
        return self.plan.pinned

    def source(self) -> RowSource:
        return RowSource(self.plan, self.sql, dictionary=self.dictionary)

    def units(self, rank: int = 0, world_size: int = 1) -> range:
        """Rank ``rank``'s row groups: every ``world_size``-th, so ranks together take each once."""
        return range(rank, len(self.plan.row_groups), world_size)


@dataclass(frozen=True)
class ScoringChunk:
    """One row group's rows: their identifiers and the model's inputs."""

    keys: pa.RecordBatch
    inputs: tuple[torch.Tensor, ...]

    @property
    def rows(self) -> int:
        return self.keys.num_rows


def prepare_scoring(
    table: Table,
    pinned: PinnedSnapshot,
    spec: ReadSpec,
    encoding: Encoding | None,
    *,
    trained_on: Schema | None = None,
    key: tuple[str, ...] | None = None,
) -> ScoringRead:
    """Check that the snapshot provides the model's features and plan its row groups.

    Args:
        spec: the model's read spec (its run's resolved config: features, classes, image
            layout, SQL); its filter is not applied (every row is scored); its
            ``since_snapshot_id`` scores only the rows appended after that snapshot.
        encoding: the run's recorded encoding (categories, fills, time origins).
        trained_on: the schema of the snapshot the model trained on, when it is this table:
            its features are then matched by field id, as the schema contract gate does.
        key: the columns that key each prediction, instead of the table's identifier fields.

    Raises:
        ColumnError: a feature is missing, renamed, dropped or retyped (named), the table has
            no identifier fields, or the SQL transform's output lacks them.
        EmptyDataError: there are no rows to score.
        TransformError, SnapshotNotFoundError: the SQL or the ``since`` snapshot do not fit.
    """
    assert spec.features is not None, "a trained model's features are recorded"
    schema = snapshot_schema(table, pinned)
    where = f"snapshot {pinned.snapshot_id} of {pinned.table!r}"
    if trained_on is not None:
        changes = contract_changes(trained_on, schema, spec.features)
        if changes:
            raise ColumnError(f"{where} no longer provides the model's features: {'; '.join(changes)}")
    identifiers = key or tuple(schema.find_column_name(i) for i in schema.identifier_field_ids)
    if not identifiers:
        raise ColumnError(
            f"table {pinned.table!r} has no identifier fields, which key each prediction; declare them (icetrain ingest --identifier COLUMN) or give --key"
        )
    unknown = [name for name in identifiers if name not in schema.column_names]
    if unknown and not spec.sql:
        raise ColumnError(
            f"key column(s) {', '.join(unknown)} not in {where}; columns: {', '.join(schema.column_names)}"
        )
    if spec.sql:
        check_transform(spec.sql)
        plan = plan_scan(
            table,
            pinned,
            schema,
            AlwaysTrue(),
            referenced_columns(spec.sql, [f.name for f in schema.fields]),
            since_snapshot_id=spec.since_snapshot_id,
        )
        empty = pa.RecordBatch.from_pylist([], schema=schema.as_arrow())
        output = transform_batch(sandboxed_connection(), empty, spec.sql).schema
        lost = [name for name in identifiers if name not in output.names]
        if lost:
            raise ColumnError(
                f"the model's SQL transform drops identifier column(s) {', '.join(lost)} of {pinned.table!r}, which key each prediction"
            )
        layout = layout_for(output, table.properties, spec, identifiers, scoring=True)
    else:
        output = schema.as_arrow()
        layout = layout_for(output, table.properties, spec, identifiers, scoring=True)
        plan = plan_scan(
            table,
            pinned,
            schema,
            AlwaysTrue(),
            (*identifiers, *layout.features),
            since_snapshot_id=spec.since_snapshot_id,
        )
    layout = layout.with_encoding(encoding)
    if not plan.row_groups:
        since = f" appended since snapshot {spec.since_snapshot_id}" if spec.since_snapshot_id is not None else ""
        raise EmptyDataError(f"{where} has no rows{since} to score; nothing was written")
    dictionary = (
        ()
        if spec.sql
        else tuple(name for name in layout.categorical if name not in identifiers and is_text(output.field(name).type))
    )
    types = tuple(output.field(name).type for name in identifiers)
    return ScoringRead(plan, layout, spec.sql, identifiers, types, dictionary)


def scoring_chunks(read: ScoringRead, rank: int = 0, world_size: int = 1, threads: int = 2) -> Iterator[ScoringChunk]:
    """Rank ``rank``'s rows, one row group at a time in canonical order, decoded a few ahead on threads.

    Raises:
        NullFeatureError: a numeric feature the run did not impute has nulls.
    """
    source = read.source()
    units = list(read.units(rank, world_size))

    def decode(unit: int) -> ScoringChunk:
        rows = source.rows(unit)
        batch = rows if isinstance(rows, pa.RecordBatch) else single_batch(rows)
        keys = batch.select(list(read.identifiers))
        return ScoringChunk(keys, model_inputs(features_to_tensor(batch, read.layout), read.layout))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque[Future[ScoringChunk]] = deque()
        for position in range(len(units)):
            while len(pending) < threads + 1 and position + len(pending) < len(units):
                pending.append(pool.submit(decode, units[position + len(pending)]))
            chunk = pending.popleft().result()
            if chunk.rows:
                yield chunk


__all__ = ["ScoringChunk", "ScoringRead", "prepare_scoring", "scoring_chunks"]
