"""Predictions tables: a model's scores written into Iceberg, streamed into data files, committed as one snapshot.

A scoring job writes data files as its batches come (memory stays bounded), then commits
them all in one snapshot whose summary says which model (name, version, run) scored which
input (table, snapshot, the snapshot it continued from) for which Dagster run. The commit
carries an append id made of those, so scoring the same input with the same model again,
or two processes doing it at once, lands one snapshot: before each attempt the history is
searched for the id, and a predictions table never lets PyIceberg retry a commit by itself
(its retry would re-apply the append on top of whatever landed meanwhile, without looking).

A killed job commits nothing; its files are orphans that ``icetrain doctor`` lists.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchNamespaceError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.io.pyarrow import parquet_file_to_data_file, schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata

from pipeline.errors import EmptyDataError, PredictionError
from pipeline.lake.catalog import split_identifier
from pipeline.lake.ingest import (
    APPEND_ID_PROPERTY,
    COMMIT_DEADLINE_S,
    NEW_TABLE_PROPERTIES,
    RUN_ID_PROPERTY,
    SOURCE_PROPERTY,
    appended_by,
    backoff,
    ensure_namespace,
    schema_difference,
)
from pipeline.names import check_table_name

OWNER_PROPERTY = "icetrain.predictions.owner"
TASK_PROPERTY = "icetrain.predictions.task"
CLASSES_PROPERTY = "icetrain.predictions.classes"
INPUT_TABLE_PROPERTY = "icetrain.predictions.input-table"
# Snapshot summary keys: what scored what.
MODEL_NAME = "icetrain.model.name"
MODEL_VERSION = "icetrain.model.version"
MODEL_RUN = "icetrain.model.run-id"
INPUT_TABLE = "icetrain.input.table"
INPUT_UUID = "icetrain.input.table-uuid"
INPUT_SNAPSHOT = "icetrain.input.snapshot-id"
INPUT_SINCE = "icetrain.input.since-snapshot-id"
ROWS_SCORED = "icetrain.rows-scored"
TARGET_FILE_BYTES = 128 * 2**20
COMPRESSION_PROPERTY = "write.parquet.compression-codec"
# A predictions table is only ever committed through ``commit_predictions``'s own loop (see the module docstring).
# Snappy: scores of floats barely compress, and zstd would take as long as reading the input did.
PREDICTIONS_TABLE_PROPERTIES = {
    **NEW_TABLE_PROPERTIES,
    "commit.retry.num-retries": "0",
    COMPRESSION_PROPERTY: "snappy",
}
SCORED_AT = "scored_at"


@dataclass(frozen=True)
class Scorer:
    """The model that scores, as the predictions table records it.

    Attributes:
        run_id: the MLflow run that trained it.
        name, version: its registered model and version (None when scored from a run id).
        owner: the pipeline the model belongs to (else its training table); a predictions
            table holds one owner's predictions.
        task: 'classification' or 'regression'. classes: the run's classes, in output order.
    """

    run_id: str
    name: str | None
    version: str | None
    owner: str
    task: str
    classes: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version}" if self.name else f"run {self.run_id}"


@dataclass(frozen=True)
class ScoredInput:
    """What was scored: the input table, its uuid, the pinned snapshot, and where an incremental job started."""

    table: str
    table_uuid: str
    snapshot_id: int
    since_snapshot_id: int | None = None


def prediction_type(scorer: Scorer) -> pa.DataType:
    """Class labels as ``class_label_type`` says; regression values as float64."""
    if scorer.task != "classification":
        return pa.float64()
    assert scorer.classes is not None
    return class_label_type(scorer.classes)


def class_label_type(classes: Sequence[str]) -> pa.DataType:
    """Class labels as integers when every class is one (``0``, ``1``), else as text."""
    try:
        [int(c) for c in classes]
    except ValueError:
        return pa.string()
    return pa.int64()


def predictions_schema(keys: Sequence[pa.Field], scorer: Scorer) -> pa.Schema:
    """The predictions table's columns: the input's identifiers, the prediction (and per-class probabilities), who scored what."""
    columns = [pa.field(f.name, f.type, nullable=False) for f in keys]
    columns.append(pa.field("prediction", prediction_type(scorer), nullable=False))
    if scorer.task == "classification":
        columns.append(pa.field("probabilities", pa.list_(pa.float32()), nullable=False))
    columns += [
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("model_run_id", pa.string(), nullable=False),
        pa.field("input_snapshot_id", pa.int64(), nullable=False),
        pa.field(SCORED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    return pa.schema(columns)


def key_columns(table: Table) -> tuple[str, ...]:
    """The columns that key a predictions table's rows: the input's identifiers, which come before ``prediction``."""
    names = table.schema().column_names
    return tuple(names[: names.index("prediction")]) if "prediction" in names else ()


def table_properties(scorer: Scorer, input_table: str) -> dict[str, str]:
    """What a predictions table says of itself when created: whose it is, the task, the classes' order."""
    properties = {
        **PREDICTIONS_TABLE_PROPERTIES,
        OWNER_PROPERTY: scorer.owner,
        TASK_PROPERTY: scorer.task,
        INPUT_TABLE_PROPERTY: input_table,
    }
    if scorer.classes is not None:
        properties[CLASSES_PROPERTY] = json.dumps(list(scorer.classes))
    return properties


def append_id(scorer: Scorer, scored: ScoredInput) -> str:
    """Names one scoring of one input snapshot by one model: the same job again lands on the same snapshot."""
    key = f"{scored.table_uuid}|{scored.snapshot_id}|{scored.since_snapshot_id}|{scorer.run_id}|{scorer.version}"
    return "predict:" + hashlib.sha256(key.encode()).hexdigest()[:24]


@dataclass
class PredictionsTarget:
    """Where a scoring job writes: an existing predictions table, or the one its commit will create.

    It can be handed to other processes (torchrun ranks): each writes its own data files with
    ``FileWriter``, and one commits all their paths with ``commit_predictions``.
    """

    identifier: str
    metadata: TableMetadata
    io_properties: dict[str, str]
    exists: bool
    properties: dict[str, str]
    _io: list[FileIO] = field(default_factory=list, repr=False)

    def io(self) -> FileIO:
        if not self._io:
            self._io.append(load_file_io(self.io_properties, self.metadata.location))
        return self._io[0]

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_io": []}


def open_predictions(
    catalog: Catalog, identifier: str, schema: pa.Schema, scorer: Scorer, input_table: str
) -> PredictionsTarget:
    """The predictions table to write into, checked to be this owner's and of this schema (nothing is created yet).

    Raises:
        InvalidNameError: a bad table name.
        PredictionError: the table exists with other columns, was not made by icetrain, or
            holds another pipeline's predictions.
    """
    check_table_name(identifier)
    properties = table_properties(scorer, input_table)
    try:
        table = catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        staged = catalog.create_table_transaction(identifier, schema=schema, properties=properties)
        metadata = staged.table_metadata
        return PredictionsTarget(identifier, metadata, dict(catalog.properties), False, properties)
    check_predictions_table(table, identifier, schema, scorer)
    return PredictionsTarget(identifier, table.metadata, dict(table.io.properties), True, properties)


def check_predictions_table(table: Table, identifier: str, schema: pa.Schema, scorer: Scorer) -> None:
    """Refuse a table that is not this owner's predictions table of this schema.

    Raises:
        PredictionError: it is not; the message says what differs and how to write a new one.
    """
    new_one = "write into another table (--into)"
    owner = table.properties.get(OWNER_PROPERTY)
    if owner is None:
        raise PredictionError(f"table {identifier!r} is not an icetrain predictions table; {new_one}")
    if owner != scorer.owner:
        raise PredictionError(
            f"table {identifier!r} holds the predictions of {owner!r}, not of {scorer.owner!r}; {new_one}"
        )
    difference = schema_difference(table.schema().as_arrow(), schema)
    if difference:
        raise PredictionError(
            f"table {identifier!r} has other columns than these predictions ({difference}); {new_one}"
        )
    if scorer.classes is not None and table.properties.get(CLASSES_PROPERTY) != json.dumps(list(scorer.classes)):
        raise PredictionError(
            f"table {identifier!r} holds predictions over classes {table.properties.get(CLASSES_PROPERTY)}, this model's are {list(scorer.classes or ())}; {new_one}"
        )


class FileWriter:
    """Writes one process's prediction batches into Parquet data files of about ``target_bytes`` each, as they come.

    Each batch becomes a row group of the current file at once (on a background thread, at
    most two batches behind), so memory holds a couple of batches, never a whole file; a file
    is closed once ``target_bytes`` of predictions went into it. Files carry the table's field
    ids; their Iceberg metadata is read from their footers when they are committed.
    """

    def __init__(self, target: PredictionsTarget, target_bytes: int = TARGET_FILE_BYTES):
        self.target = target
        self.target_bytes = target_bytes
        self.paths: list[str] = []
        self.rows = 0
        self.arrow_schema = schema_to_pyarrow(target.metadata.schema())
        self._plain = pa.schema([f.remove_metadata() for f in self.arrow_schema])
        self._locations = load_location_provider(target.metadata.location, target.metadata.properties)
        self._compression = target.metadata.properties.get(COMPRESSION_PROPERTY, "zstd")
        self._name = f"{uuid.uuid4()}"
        self._counter = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icetrain-predictions")
        self._pending: deque[Future[None]] = deque()
        self._file: _OpenFile | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.schema != self._plain:
            batch = batch.cast(self._plain)
        self.rows += batch.num_rows
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write_batch, batch))

    def close(self) -> None:
        """Write what is queued, close the last file and wait for all of it."""
        try:
            self._drain()
            self._pool.submit(self._close_file).result()
        finally:
            self._pool.shutdown()

    def discard(self) -> None:
        """Delete the files written so far (a failed job leaves nothing behind)."""
        try:
            self._drain()
            self._pool.submit(self._close_file).result()
        except Exception:
            pass
        self._pool.shutdown()
        _delete(self.target.io(), self.paths)
        self.paths = []

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        if self._file is None:
            path = self._locations.new_data_location(f"00000-{next(self._counter)}-{self._name}.parquet")
            self.paths.append(path)
            stream = self.target.io().new_output(path).create(overwrite=False)
            writer = pq.ParquetWriter(
                stream,
                self.arrow_schema,
                compression=self._compression,
                use_dictionary=[f.name for f in self.arrow_schema if pa.types.is_string(f.type)],  # repeated names
                write_statistics=[f.name for f in self.arrow_schema if not pa.types.is_list(f.type)],
            )
            self._file = _OpenFile(stream, writer)
        self._file.writer.write_batch(batch)
        self._file.written += batch.nbytes
        if self._file.written >= self.target_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            opened, self._file = self._file, None
            opened.writer.close()
            opened.stream.close()


@dataclass
class _OpenFile:
    stream: Any
    writer: pq.ParquetWriter
    written: int = 0


def commit_predictions(
    catalog: Catalog,
    target: PredictionsTarget,
    paths: Sequence[str],
    scorer: Scorer,
    scored: ScoredInput,
    rows: int,
    *,
    run_id: str | None = None,
    deadline_s: float = COMMIT_DEADLINE_S,
) -> tuple[int, bool]:
    """Commit the written files as one snapshot (creating the table if it is new), once per model and input.

    Returns:
        The snapshot holding these predictions, and whether it was already there (then the
        files are deleted: an earlier or concurrent job committed the same predictions).

    Raises:
        EmptyDataError: no rows were scored (nothing is committed).
        PredictionError: the table changed under the job (other schema or owner), or commits
            kept conflicting until the deadline.
    """
    writer_io = target.io()
    if rows == 0:
        _delete(writer_io, paths)
        raise EmptyDataError(
            f"snapshot {scored.snapshot_id} of {scored.table!r} has no rows to score; nothing was written"
        )
    name = append_id(scorer, scored)
    summary = {
        SOURCE_PROPERTY: "icetrain predict",
        APPEND_ID_PROPERTY: name,
        MODEL_RUN: scorer.run_id,
        INPUT_TABLE: scored.table,
        INPUT_UUID: scored.table_uuid,
        INPUT_SNAPSHOT: str(scored.snapshot_id),
        ROWS_SCORED: str(rows),
    }
    if scorer.name:
        summary[MODEL_NAME] = scorer.name
    if scorer.version:
        summary[MODEL_VERSION] = str(scorer.version)
    if scored.since_snapshot_id is not None:
        summary[INPUT_SINCE] = str(scored.since_snapshot_id)
    if run_id:
        summary[RUN_ID_PROPERTY] = run_id
    give_up = time.monotonic() + deadline_s
    for attempt in itertools.count():
        try:
            table = catalog.load_table(target.identifier)
        except (NoSuchTableError, NoSuchNamespaceError):
            table = None
        if table is not None:
            landed = appended_by(table, name)
            if landed is not None:
                _delete(writer_io, paths)
                return landed, True
        try:
            if table is None:
                return _create_with(catalog, target, paths, summary, name), False
            check_predictions_table(table, target.identifier, target.metadata.schema().as_arrow(), scorer)
            if target.metadata.schema().as_struct() != table.schema().as_struct():
                raise PredictionError(
                    f"table {target.identifier!r} changed its columns while predictions were written; nothing was committed, score again"
                )
            with table.transaction() as transaction:
                _append_files(transaction, table.metadata, table.io, paths, summary)
            return _snapshot_of(catalog.load_table(target.identifier), name), False
        except (CommitFailedException, TableAlreadyExistsError) as exc:
            if time.monotonic() >= give_up:
                raise PredictionError(
                    f"predictions for {target.identifier!r} kept conflicting with other commits for {deadline_s:.0f}s; nothing was committed ({exc})"
                ) from exc
            time.sleep(backoff(attempt))
    raise AssertionError("unreachable")  # pragma: no cover


def last_scored(table: Table, input_uuid: str, run_id: str | None = None) -> int | None:
    """The newest input snapshot scored into ``table`` from the input table ``input_uuid`` (by ``run_id``'s model, when given)."""
    for snapshot in reversed(table.snapshots()):
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if summary.get(INPUT_UUID) != input_uuid or INPUT_SNAPSHOT not in summary:
            continue
        if run_id is None or summary.get(MODEL_RUN) == run_id:
            return int(summary[INPUT_SNAPSHOT])
    return None


def _create_with(
    catalog: Catalog, target: PredictionsTarget, paths: Sequence[str], summary: dict[str, str], name: str
) -> int:
    namespace, _ = split_identifier(target.identifier)
    ensure_namespace(catalog, namespace)
    schema = target.metadata.schema()
    with catalog.create_table_transaction(
        target.identifier, schema=schema, properties=target.properties
    ) as transaction:
        if transaction.table_metadata.schema().as_struct() != schema.as_struct():  # pragma: no cover
            raise PredictionError(f"table {target.identifier!r} would get other field ids than its files carry")
        _append_files(transaction, transaction.table_metadata, target.io(), paths, summary)
    return _snapshot_of(catalog.load_table(target.identifier), name)


def _append_files(
    transaction, metadata: TableMetadata, io: FileIO, paths: Sequence[str], summary: Mapping[str, str]
) -> None:
    with transaction.update_snapshot(snapshot_properties=dict(summary)).fast_append() as append:
        for path in paths:
            append.append_data_file(parquet_file_to_data_file(io, metadata, path))


def _snapshot_of(table: Table, name: str) -> int:
    found = appended_by(table, name)
    if found is None:  # pragma: no cover
        raise PredictionError(f"predictions were committed to {table.name()} but their snapshot was not found")
    return found


def _delete(io: FileIO, paths: Sequence[str]) -> None:
    for path in paths:
        try:
            io.delete(path)
        except OSError:
            pass


__all__ = [
    "FileWriter",
    "PredictionsTarget",
    "ScoredInput",
    "Scorer",
    "append_id",
    "class_label_type",
    "commit_predictions",
    "key_columns",
    "last_scored",
    "open_predictions",
    "predictions_schema",
]
