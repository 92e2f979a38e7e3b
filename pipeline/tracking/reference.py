"""The snapshot a pipeline's quality gates compare against, found the same way from the CLI and Dagster.

The reference is the snapshot the ``champion`` alias of ``tracking.registered_model`` was
trained on, else the snapshot of the pipeline's last finished MLflow run (tag
``icetrain.pipeline``), else none (the first model). It is read from MLflow, never from
Dagster's instance, so ``icetrain train --pipeline NAME`` and the Dagster job judge a snapshot
against the same reference. An MLflow that cannot be asked is an error, never "no champion".
"""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyiceberg.table import Table

from pipeline.data.snapshots import PinnedSnapshot
from pipeline.tracking.lineage import is_absence, tracking_error
from pipeline.tracking.tags import PIPELINE_TAG, SNAPSHOT_ID_TAG, TABLE_TAG

CHAMPION_ALIAS = "champion"


def reference_snapshot(
    client: MlflowClient, catalog_name: str, table: Table, table_name: str, pipeline: str, registered_model: str | None
) -> PinnedSnapshot | None:
    """The gates' reference snapshot of ``table_name`` for ``pipeline``; None before any model, or when that snapshot was expired.

    Raises:
        TrackingError: MLflow could not be asked.
    """
    snapshot_id = _champion_snapshot(client, registered_model) if registered_model else None
    if snapshot_id is None:
        snapshot_id = _last_finished_run_snapshot(client, pipeline, table_name)
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    if snapshot is None:
        return None
    return PinnedSnapshot(
        catalog_name, table_name, snapshot.snapshot_id, "id", str(snapshot.snapshot_id), snapshot.timestamp_ms
    )


def champion_version(client: MlflowClient, model: str, alias: str = CHAMPION_ALIAS) -> ModelVersion | None:
    """The version of ``model`` holding ``alias`` (the champion); None only when the registry answers that there is none.

    Raises:
        TrackingError: MLflow could not be asked (an error is not an absence).
    """
    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException as exc:
        if is_absence(exc):
            return None  # the registry answered: no such model or alias
        what = "the champion" if alias == CHAMPION_ALIAS else f"alias {alias!r}"
        raise tracking_error(f"look up {what} of registered model {model!r}", exc) from exc


def _champion_snapshot(client: MlflowClient, model: str) -> int | None:
    version = champion_version(client, model)
    value = version.tags.get(SNAPSHOT_ID_TAG) if version is not None else None
    return int(value) if value and value.isdigit() else None


def last_finished_run(client: MlflowClient, pipeline: str, table_name: str) -> Run | None:
    """The pipeline's newest finished run on ``table_name``; None when it has none.

    Raises:
        TrackingError: MLflow could not be asked.
    """
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        query = f"tags.`{PIPELINE_TAG}` = '{pipeline}' and tags.`{TABLE_TAG}` = '{table_name}' and attributes.status = 'FINISHED'"
        runs = (
            client.search_runs(experiments, query, max_results=1, order_by=["attributes.start_time DESC"])
            if experiments
            else []
        )
    except MlflowException as exc:
        raise tracking_error(f"look up the last finished run of pipeline {pipeline!r}", exc) from exc
    return runs[0] if runs else None


def _last_finished_run_snapshot(client: MlflowClient, pipeline: str, table_name: str) -> int | None:
    run = last_finished_run(client, pipeline, table_name)
    value = run.data.tags.get(SNAPSHOT_ID_TAG) if run is not None else None
    return int(value) if value and value.isdigit() else None


__all__ = ["CHAMPION_ALIAS", "champion_version", "last_finished_run", "reference_snapshot"]
