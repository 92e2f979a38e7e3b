"""The one place an MLflow client is built: every part that talks to MLflow is handed one.

An explicit ``MlflowClient`` on the settings' tracking URI, never MLflow's global state
(``mlflow.set_tracking_uri``), so two projects in one process (tests, Dagster's in-process
executor) never see each other's store.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.config.settings import Settings


def tracking_client(settings: Settings) -> MlflowClient:
    """A client of the settings' MLflow tracking store and model registry."""
    return MlflowClient(settings.tracking_uri)


__all__ = ["tracking_client"]
