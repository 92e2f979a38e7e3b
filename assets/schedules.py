"""Scheduled retraining (stopped by default; start it in the UI)."""


from dagster import DefaultScheduleStatus, ScheduleDefinition

from assets.jobs import train_job

nightly_retrain = ScheduleDefinition(
    name="nightly_retrain",
    job=train_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Retrain every night on the table's current snapshot, pinned when the run starts.",
)
