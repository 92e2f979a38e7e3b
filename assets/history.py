"""What a pipeline's model was last trained on, read from the Dagster instance's materializations."""

from dataclasses import dataclass

from dagster import AssetMaterialization, DagsterEventType, DagsterInstance

from assets.keys import trained_model_key
from pipeline.config.project import Pipeline

CODE_VERSION_TAG = "dagster/code_version"


@dataclass(frozen=True)
class LastTraining:
    """The latest ``NAME/trained_model`` materialization: its snapshot id, code version and MLflow run."""

    snapshot_id: str
    code_version: str
    mlflow_run_id: str


def last_training(instance: DagsterInstance, pipeline: Pipeline) -> LastTraining | None:
    """The pipeline's latest trained model as Dagster recorded it; None before the first one.

    For deciding *whether* to train (sensor, schedule, drift reference); never for picking the
    model a run works on, which is the one the run itself trained (``trained_in_run``).
    """
    event = instance.get_latest_materialization_event(trained_model_key(pipeline))
    materialization = event.asset_materialization if event is not None else None
    return _training(materialization) if materialization is not None else None


def trained_in_run(instance: DagsterInstance, pipeline: Pipeline, run_id: str) -> LastTraining | None:
    """The model the Dagster run ``run_id`` itself trained (its own ``NAME/trained_model`` materialization); None if it trained none.

    Two runs of a pipeline may overlap (a sensor's and a backfill's): a step that works on "the
    newest" model could pick up the other run's; this never does.
    """
    records = instance.get_records_for_run(
        run_id=run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=1000
    ).records
    key = trained_model_key(pipeline)
    ours = [
        r.event_log_entry.asset_materialization for r in records if r.event_log_entry.asset_materialization is not None
    ]
    ours = [m for m in ours if m.asset_key == key]
    return _training(ours[-1]) if ours else None


def _training(materialization: AssetMaterialization) -> LastTraining:
    metadata = materialization.metadata
    snapshot = metadata.get("snapshot_id")
    run = metadata.get("mlflow_run_id")
    return LastTraining(
        snapshot_id=str(snapshot.value) if snapshot is not None else "",
        code_version=(materialization.tags or {}).get(CODE_VERSION_TAG, ""),
        mlflow_run_id=str(run.value) if run is not None else "",
    )
