"""What a pipeline's model was last trained on, read from the Dagster instance's materializations."""

from dataclasses import dataclass

from dagster import DagsterInstance

from assets.keys import trained_model_key
from pipeline.project import Pipeline

CODE_VERSION_TAG = "dagster/code_version"


@dataclass(frozen=True)
class LastTraining:
    """The latest ``NAME/trained_model`` materialization: its snapshot id, code version and MLflow run."""

    snapshot_id: str
    code_version: str
    mlflow_run_id: str


def last_training(instance: DagsterInstance, pipeline: Pipeline) -> LastTraining | None:
    """The pipeline's latest trained model as Dagster recorded it; None before the first one."""
    event = instance.get_latest_materialization_event(trained_model_key(pipeline))
    materialization = event.asset_materialization if event is not None else None
    if materialization is None:
        return None
    metadata = materialization.metadata
    snapshot = metadata.get("snapshot_id")
    run = metadata.get("mlflow_run_id")
    return LastTraining(
        snapshot_id=str(snapshot.value) if snapshot is not None else "",
        code_version=(materialization.tags or {}).get(CODE_VERSION_TAG, ""),
        mlflow_run_id=str(run.value) if run is not None else "",
    )
