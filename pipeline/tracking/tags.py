"""The MLflow tag names icetrain writes on every run (importable without MLflow or torch)."""

SNAPSHOT_ID_TAG = "icetrain.snapshot_id"
TABLE_TAG = "icetrain.table"
DAGSTER_RUN_TAG = "icetrain.dagster_run_id"
PIPELINE_TAG = "icetrain.pipeline"
LAUNCHED_BY_TAG = "icetrain.launched_by"
GIT_DIRTY_TAG = "icetrain.git_dirty"
REPRODUCES_TAG = "icetrain.reproduces"
GATES_TAG = "icetrain.gates"
ENCODING_CHANGES_TAG = "icetrain.encoding.changes"
NOTE_TAG = "mlflow.note.content"

__all__ = [
    "DAGSTER_RUN_TAG",
    "ENCODING_CHANGES_TAG",
    "GATES_TAG",
    "GIT_DIRTY_TAG",
    "LAUNCHED_BY_TAG",
    "NOTE_TAG",
    "PIPELINE_TAG",
    "REPRODUCES_TAG",
    "SNAPSHOT_ID_TAG",
    "TABLE_TAG",
]
