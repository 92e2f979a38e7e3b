"""A pipeline's scheduled retraining (stopped unless ``retrain.schedule_on``; start it in the UI)."""

from dagster import (
    DefaultScheduleStatus,
    RunConfig,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from assets.assets import code_version
from assets.config import PinConfig, ScoreConfig
from assets.history import last_training
from assets.jobs import job_name, predict_job_name
from assets.keys import predictions_key, training_data_key
from assets.resources import IcebergResource
from pipeline.config.project import Pipeline
from pipeline.lake.catalog import current_snapshot
from pipeline.lake.predictions import last_scored


def retrain_schedule(pipeline: Pipeline) -> ScheduleDefinition:
    """Each tick pins the table's current snapshot and retrains on it.

    A tick skips, saying why, when the table has no snapshot yet or when the last trained
    model already used this snapshot with this code version (nothing would change). The
    run key is ``snapshot:code_version``, so the same pair never trains twice from here.
    """
    retrain, table_name = pipeline.config.retrain, pipeline.table
    op_name = "__".join(training_data_key(pipeline).path)
    version = code_version(pipeline)

    @schedule(
        name=f"{pipeline.name}_schedule",
        job_name=job_name(pipeline),
        cron_schedule=retrain.schedule,
        default_status=DefaultScheduleStatus.RUNNING if retrain.schedule_on else DefaultScheduleStatus.STOPPED,
        description=f"Retrain {pipeline.name!r} on {table_name}'s current snapshot ({retrain.schedule}) unless its model already trained on it.",
    )
    def retrain_on_schedule(context: ScheduleEvaluationContext, iceberg: IcebergResource) -> RunRequest | SkipReason:
        catalog = iceberg.catalog()
        current = current_snapshot(catalog, table_name)
        if current is None:
            return SkipReason(f"table {table_name} has no snapshot yet")
        seen = str(current.snapshot_id)
        last = last_training(context.instance, pipeline)
        if last is not None and last.snapshot_id == seen and last.code_version == version:
            return SkipReason(
                f"the last model (MLflow run {last.mlflow_run_id}) already trained on snapshot {seen} of {table_name} with code version {version}"
            )
        return RunRequest(
            run_key=f"{seen}:{version}",
            run_config=RunConfig(ops={op_name: PinConfig(snapshot_id=seen)}),
            tags={"icetrain/snapshot_id": seen, "icetrain/pipeline": pipeline.name, "icetrain/trigger": "schedule"},
        )

    return retrain_on_schedule


def scoring_schedule(pipeline: Pipeline) -> ScheduleDefinition:
    """Each tick scores the scoring table's current snapshot with the champion of the moment (run key: the snapshot).

    A tick skips, saying why, when the table has no snapshot or its current one was already scored.
    """
    section, table_name, into = pipeline.config.predict, pipeline.scoring_table, pipeline.predictions_table
    op_name = "__".join(predictions_key(pipeline).path)

    @schedule(
        name=f"{pipeline.name}_predict_schedule",
        job_name=predict_job_name(pipeline),
        cron_schedule=section.schedule,
        default_status=DefaultScheduleStatus.RUNNING if section.schedule_on else DefaultScheduleStatus.STOPPED,
        description=f"Score {table_name}'s current snapshot with the champion ({section.schedule}) unless it was scored.",
    )
    def predict_on_schedule(context: ScheduleEvaluationContext, iceberg: IcebergResource) -> RunRequest | SkipReason:
        catalog = iceberg.catalog()
        table = catalog.load_table(table_name) if catalog.table_exists(table_name) else None
        current = table.current_snapshot() if table is not None else None
        if table is None or current is None:
            return SkipReason(f"table {table_name} has no snapshot yet")
        seen = str(current.snapshot_id)
        if (
            catalog.table_exists(into)
            and last_scored(catalog.load_table(into), str(table.metadata.table_uuid)) == current.snapshot_id
        ):
            return SkipReason(f"snapshot {seen} of {table_name} was already scored into {into}")
        return RunRequest(
            run_key=seen,
            run_config=RunConfig(ops={op_name: ScoreConfig(snapshot_id=seen)}),
            tags={"icetrain/snapshot_id": seen, "icetrain/pipeline": pipeline.name, "icetrain/trigger": "schedule"},
        )

    return predict_on_schedule
