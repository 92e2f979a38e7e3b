"""Retrain a pipeline when its table gets a new snapshot, pinned to that snapshot's id."""

from dagster import DefaultSensorStatus, RunConfig, RunRequest, SensorDefinition, SensorEvaluationContext, SkipReason, sensor

from assets.assets import training_data_key
from assets.config import PinConfig
from assets.jobs import UnresolvedAssetJobDefinition
from assets.resources import IcebergResource
from pipeline.project import Pipeline

NO_SNAPSHOT = "none"


def new_snapshot_sensor(pipeline: Pipeline, job: UnresolvedAssetJobDefinition) -> SensorDefinition:
    """A sensor whose cursor is the last snapshot id it saw.

    Its first tick records the table's current snapshot and trains on it only if
    ``retrain.train_on_first_snapshot``; after that, each new current snapshot requests one
    run (``run_key`` = snapshot id, so a snapshot never trains twice) whose run config pins it.
    """
    table, retrain = pipeline.table, pipeline.config.retrain
    op_name = "__".join(training_data_key(pipeline).path)

    @sensor(
        name=f"{pipeline.name}_new_snapshot",
        job=job,
        minimum_interval_seconds=retrain.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING if retrain.sensor_on else DefaultSensorStatus.STOPPED,
        description=f"Retrain {pipeline.name!r} on each new snapshot of {table}.",
    )
    def new_snapshot(context: SensorEvaluationContext, iceberg: IcebergResource) -> RunRequest | SkipReason:
        catalog = iceberg.catalog()
        current = catalog.load_table(table).current_snapshot() if catalog.table_exists(table) else None
        seen = str(current.snapshot_id) if current is not None else NO_SNAPSHOT
        first_tick, previous = context.cursor is None, context.cursor
        context.update_cursor(seen)
        if current is None:
            return SkipReason(f"table {table} has no snapshot yet")
        if first_tick and not retrain.train_on_first_snapshot:
            return SkipReason(f"started: recorded snapshot {seen} of {table} as seen; the next new snapshot retrains (retrain.train_on_first_snapshot: true trains on this one)")
        if previous == seen:
            return SkipReason(f"no new snapshot of {table} since {seen}")
        return RunRequest(
            run_key=seen,
            run_config=RunConfig(ops={op_name: PinConfig(snapshot_id=seen)}),
            tags={"icetrain/snapshot_id": seen, "icetrain/pipeline": pipeline.name},
        )

    return new_snapshot
