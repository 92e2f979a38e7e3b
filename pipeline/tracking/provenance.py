"""Lineage both ways: from a prediction to the rows its model trained on, and from a model to the predictions it wrote.

A prediction row names its model's run and its input snapshot; the predictions snapshot that
wrote it records both in its summary; the run records its training table and snapshot; and
that snapshot's ancestry lists the appends that wrote the training rows, each with its source
and Dagster run (``pipeline.lake.ingest``'s summary keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from pipeline.config.settings import Settings
from pipeline.data.snapshots import ancestors
from pipeline.errors import ConfigError, PredictionError
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.lake.ingest import RUN_ID_PROPERTY, SOURCE_PROPERTY
from pipeline.lake.predictions import INPUT_SNAPSHOT, INPUT_TABLE, MODEL_RUN, OWNER_PROPERTY, ROWS_SCORED
from pipeline.tracking.lineage import get_run
from pipeline.tracking.tags import SNAPSHOT_ID_TAG, TABLE_TAG


@dataclass(frozen=True)
class Append:
    """One snapshot in the training snapshot's ancestry: when, what it did, how many rows, who wrote them."""

    snapshot_id: int
    committed_at: datetime
    operation: str
    added_rows: int
    source: str
    dagster_run_id: str


@dataclass(frozen=True)
class PredictionLineage:
    """One prediction row, followed back to the appends that wrote its model's training rows."""

    predictions_table: str
    key: dict[str, object]
    prediction: object
    predictions_snapshot_id: int | None
    model_name: str | None
    model_version: str | None
    run_id: str
    input_table: str
    input_snapshot_id: int
    training_table: str
    training_snapshot_id: int
    appends: tuple[Append, ...]


@dataclass(frozen=True)
class Scoring:
    """A predictions snapshot a model wrote."""

    predictions_table: str
    snapshot_id: int
    committed_at: datetime
    input_table: str
    input_snapshot_id: int
    rows: int
    dagster_run_id: str


def prediction_lineage(settings: Settings, predictions_table: str, key_value: str) -> list[PredictionLineage]:
    """Every prediction of the row ``key_value`` (its identifier) in ``predictions_table``, each followed back.

    Raises:
        TableNotFoundError: no such table. PredictionError: not a predictions table, or no such row.
        ConfigError: a key of several columns. RunNotFoundError: the model's run is gone.
    """
    catalog = open_catalog(settings)
    table = load_table(catalog, predictions_table)
    if OWNER_PROPERTY not in table.properties:
        raise PredictionError(f"table {predictions_table!r} is not an icetrain predictions table")
    names = table.schema().column_names
    keys = names[: names.index("prediction")]
    if len(keys) != 1:
        raise ConfigError(f"{predictions_table!r} is keyed by {', '.join(keys)}; lineage takes a one-column key")
    column = table.schema().find_field(keys[0])
    value: object = (
        int(key_value) if str(column.field_type) in ("int", "long") and key_value.lstrip("-").isdigit() else key_value
    )
    rows = table.scan(row_filter=EqualTo(keys[0], value)).to_arrow()
    if rows.num_rows == 0:
        raise PredictionError(f"{predictions_table!r} holds no prediction for {keys[0]} = {key_value}")
    found = []
    for row in rows.to_pylist():
        run = get_run(settings, row["model_run_id"])
        training_table, training_snapshot = run.data.tags[TABLE_TAG], int(run.data.tags[SNAPSHOT_ID_TAG])
        found.append(
            PredictionLineage(
                predictions_table=predictions_table,
                key={keys[0]: row[keys[0]]},
                prediction=row["prediction"],
                predictions_snapshot_id=_writer_of(table, row["model_run_id"], row["input_snapshot_id"]),
                model_name=row["model_name"],
                model_version=row["model_version"],
                run_id=row["model_run_id"],
                input_table=table.properties.get("icetrain.predictions.input-table", ""),
                input_snapshot_id=row["input_snapshot_id"],
                training_table=training_table,
                training_snapshot_id=training_snapshot,
                appends=_appends(catalog, training_table, training_snapshot),
            )
        )
    return found


def model_scorings(settings: Settings, run_id: str, predictions_tables: list[str]) -> list[Scoring]:
    """The predictions snapshots ``run_id``'s model wrote into these tables, oldest first."""
    catalog = open_catalog(settings)
    found = []
    for name in predictions_tables:
        table = load_table(catalog, name)
        for snapshot in table.snapshots():
            summary = snapshot.summary.additional_properties if snapshot.summary else {}
            if summary.get(MODEL_RUN) != run_id:
                continue
            found.append(
                Scoring(
                    name,
                    snapshot.snapshot_id,
                    datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC),
                    summary.get(INPUT_TABLE, ""),
                    int(summary.get(INPUT_SNAPSHOT, 0)),
                    int(summary.get(ROWS_SCORED, 0)),
                    summary.get(RUN_ID_PROPERTY, ""),
                )
            )
    return sorted(found, key=lambda s: s.committed_at)


def predictions_tables(catalog: Catalog) -> list[str]:
    """Every icetrain predictions table of the catalog."""
    names = []
    for namespace in catalog.list_namespaces():
        for identifier in catalog.list_tables(namespace):
            name = ".".join(identifier)
            if OWNER_PROPERTY in catalog.load_table(name).properties:
                names.append(name)
    return sorted(names)


def _writer_of(table: Table, run_id: str, input_snapshot: int) -> int | None:
    for snapshot in table.snapshots():
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if summary.get(MODEL_RUN) == run_id and summary.get(INPUT_SNAPSHOT) == str(input_snapshot):
            return snapshot.snapshot_id
    return None


def _appends(catalog: Catalog, table_name: str, snapshot_id: int) -> tuple[Append, ...]:
    """The training snapshot and its ancestors, oldest first (as far as history was kept)."""
    table = load_table(catalog, table_name)
    found = []
    for snapshot in reversed(ancestors(table, snapshot_id)):
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        found.append(
            Append(
                snapshot.snapshot_id,
                datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC),
                snapshot.summary.operation.value if snapshot.summary else "unknown",
                int(summary.get("added-records", 0)),
                summary.get(SOURCE_PROPERTY, ""),
                summary.get(RUN_ID_PROPERTY, ""),
            )
        )
    return tuple(found)


__all__ = ["Append", "PredictionLineage", "Scoring", "model_scorings", "prediction_lineage", "predictions_tables"]
