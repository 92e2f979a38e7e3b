"""``icetrain demo``: run the whole asset graph against DAGSTER_HOME and report what it pinned."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import IcetrainError

QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class DemoOutcome:
    """The ids a demo run produced."""

    dagster_run_id: str
    snapshot_id: str
    mlflow_run_id: str
    metrics: dict[str, float]


def run_demo_job() -> DemoOutcome:
    """Execute ``demo_job`` in process on the instance in ``DAGSTER_HOME``.

    Raises:
        IcetrainError: a step failed or a blocking check did not pass; the message names it.
    """
    from dagster import DagsterInstance

    from assets.definitions import defs
    from pipeline.config.project import find_project_file

    if "demo_job" not in {job.name for job in defs.resolve_all_job_defs()}:
        where = find_project_file() or "no pipelines file"
        raise IcetrainError(
            f"no demo_job in the code location ({where}); run from the icetrain repository, or set ICETRAIN_CONFIG to its icetrain.yaml"
        )
    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def("demo_job").execute_in_process(
            instance=instance, raise_on_error=False, run_config=QUIET_LOGS
        )
    failures = [_failure_text(event) for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    failed_checks = [
        f"check {event.asset_check_evaluation_data.check_name} failed: {event.asset_check_evaluation_data.description}"
        for event in result.all_events
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.asset_check_evaluation_data.passed
    ]
    if failures or failed_checks or not result.success:
        raise IcetrainError(
            f"demo run {result.run_id} failed: " + "; ".join(failed_checks + failures or ["see the Dagster UI"])
        )
    metadata = {
        event.asset_key.path[-1]: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
    }
    model = metadata["trained_model"]
    metric_names = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return DemoOutcome(
        dagster_run_id=result.run_id,
        snapshot_id=str(metadata["training_data"]["snapshot_id"]),
        mlflow_run_id=str(model["mlflow_run_id"]),
        metrics={name: float(model[name]) for name in metric_names if name in model},
    )


def _failure_text(event: object) -> str:
    data = event.step_failure_data  # type: ignore[attr-defined]
    if data.user_failure_data is not None and data.user_failure_data.description:
        return f"{event.step_key}: {data.user_failure_data.description}"  # type: ignore[attr-defined]
    message = data.error.message.strip().splitlines()[0] if data.error else "failed"
    return f"{event.step_key}: {message}"  # type: ignore[attr-defined]
