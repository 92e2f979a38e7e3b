"""The asset graph: demo table -> pinned training data -> trained model.

The training-data asset resolves the snapshot once; the model asset trains on exactly that
snapshot id and never asks for "latest" again.
"""


from dataclasses import dataclass

import pyarrow as pa
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, Output, TableColumn, TableSchema, asset

from assets.config import ModelConfig, TrainingDataConfig
from assets.failures import user_errors_as_failures
from assets.resources import IcebergResource, MlflowResource, combined_settings
from pipeline.catalog import load_table
from pipeline.config import ReadSpec
from pipeline.demo_data import DIGITS_TABLE, ingest_digits
from pipeline.quality import LabelProfile, profile_labels
from pipeline.reading import snapshot_schema
from pipeline.snapshots import PinnedSnapshot, list_snapshots, resolve_snapshot
from training.run import train_on_snapshot

GROUP = "icetrain"


@dataclass(frozen=True)
class TrainingData:
    """The pinned snapshot, what to read from it, and its label profile: the training-data asset's value."""

    pinned: PinnedSnapshot
    spec: ReadSpec
    profile: LabelProfile


@asset(group_name=GROUP, kinds={"iceberg"}, description="scikit-learn's digits in an Iceberg table, written in three appends.")
def digits_table(context: AssetExecutionContext, iceberg: IcebergResource) -> MaterializeResult:
    with user_errors_as_failures():
        catalog = iceberg.catalog()
        new_snapshots = ingest_digits(catalog, identifier=DIGITS_TABLE, run_id=context.run_id)
        history = list_snapshots(load_table(catalog, DIGITS_TABLE))
    current = history[-1]
    return MaterializeResult(
        metadata={
            "table": DIGITS_TABLE,
            "current_snapshot_id": str(current.snapshot_id),
            "new_snapshot_ids": ", ".join(str(s) for s in new_snapshots) or "none (table already holds the digits)",
            "snapshot_count": len(history),
            "total_rows": current.total_rows,
        }
    )


@asset(
    group_name=GROUP,
    deps=[digits_table],
    kinds={"iceberg"},
    description="Resolves the requested snapshot (id, tag/branch, as-of or latest) and pins it for training.",
)
def training_data(context: AssetExecutionContext, config: TrainingDataConfig, iceberg: IcebergResource) -> Output[TrainingData]:
    with user_errors_as_failures():
        settings = iceberg.settings()
        table = load_table(iceberg.catalog(), config.table)
        pinned = resolve_snapshot(table, config.request(), settings.catalog_name)
        spec = config.read_spec()
        profile = profile_labels(table, pinned, spec)
        schema = snapshot_schema(table, pinned).as_arrow()
    context.log.info(f"pinned {pinned.table} at snapshot {pinned.snapshot_id} (asked by {pinned.asked_by})")
    return Output(
        TrainingData(pinned=pinned, spec=spec, profile=profile),
        metadata={
            "table": pinned.table,
            "snapshot_id": str(pinned.snapshot_id),
            "asked_by": pinned.asked_by,
            "asked_value": pinned.asked_value,
            "snapshot_committed_at": pinned.committed_at.isoformat(),
            "row_count": profile.row_count,
            "row_filter": spec.row_filter or "",
            "sql": spec.sql or "",
            "label_counts": MetadataValue.json(profile.class_counts),
            "dagster/column_schema": _table_schema(schema),
        },
    )


@asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, description="Trains on the pinned snapshot and records the run in MLflow.")
def trained_model(
    context: AssetExecutionContext,
    config: ModelConfig,
    training_data: TrainingData,
    iceberg: IcebergResource,
    mlflow: MlflowResource,
) -> MaterializeResult:
    with user_errors_as_failures():
        result = train_on_snapshot(
            combined_settings(iceberg, mlflow),
            training_data.pinned,
            training_data.spec,
            config.train_config(),
            dagster_run_id=context.run_id,
            run_name=f"dagster-{context.run_id[:8]}",
        )
    metrics = {name: round(value, 4) for name, value in result.final_metrics.items()}
    return MaterializeResult(
        metadata={
            "mlflow_run_id": result.run_id,
            "mlflow_experiment_id": result.experiment_id,
            "snapshot_id": str(result.pinned.snapshot_id),
            "table": result.pinned.table,
            "row_count": result.row_count,
            "dataset_digest": result.digest,
            **metrics,
        }
    )


def _table_schema(schema: pa.Schema) -> TableSchema:
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])
