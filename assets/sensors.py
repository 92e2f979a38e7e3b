"""Retrain when the training table gets a new snapshot, pinned to that snapshot's id."""


from dagster import DefaultSensorStatus, RunConfig, RunRequest, SensorEvaluationContext, SkipReason, sensor

from assets.config import TrainingDataConfig
from assets.jobs import train_job
from assets.resources import IcebergResource
from pipeline.demo_data import DIGITS_TABLE


@sensor(job=train_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def new_snapshot_sensor(context: SensorEvaluationContext, iceberg: IcebergResource) -> RunRequest | SkipReason:
    """Request a training run for each new current snapshot of the digits table.

    The run config pins the snapshot id the sensor saw, so the run trains on exactly that
    snapshot even if more are committed before it starts.
    """
    catalog = iceberg.catalog()
    if not catalog.table_exists(DIGITS_TABLE):
        return SkipReason(f"table {DIGITS_TABLE} does not exist yet")
    current = catalog.load_table(DIGITS_TABLE).current_snapshot()
    if current is None:
        return SkipReason(f"table {DIGITS_TABLE} has no snapshots yet")
    snapshot_id = str(current.snapshot_id)
    if context.cursor == snapshot_id:
        return SkipReason(f"no new snapshot since {snapshot_id}")
    context.update_cursor(snapshot_id)
    return RunRequest(
        run_key=snapshot_id,
        run_config=RunConfig(ops={"training_data": TrainingDataConfig(table=DIGITS_TABLE, snapshot_id=snapshot_id)}),
        tags={"icetrain/snapshot_id": snapshot_id},
    )
