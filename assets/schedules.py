"""A pipeline's scheduled retraining (stopped unless ``retrain.schedule_on``; start it in the UI)."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from assets.jobs import UnresolvedAssetJobDefinition

from pipeline.project import Pipeline


def retrain_schedule(pipeline: Pipeline, job: UnresolvedAssetJobDefinition) -> ScheduleDefinition:
    retrain = pipeline.config.retrain
    return ScheduleDefinition(
        name=f"{pipeline.name}_schedule",
        job=job,
        cron_schedule=retrain.schedule,
        default_status=DefaultScheduleStatus.RUNNING if retrain.schedule_on else DefaultScheduleStatus.STOPPED,
        description=f"Retrain {pipeline.name!r} on {pipeline.table}'s current snapshot ({retrain.schedule}), pinned when the run starts.",
    )
