"""Dagster resources: the Iceberg catalog and the MLflow store.

Both default to the environment (``ICETRAIN_HOME``, ``ICETRAIN_CATALOG``, PyIceberg's own
configuration, ``MLFLOW_TRACKING_URI``), read when a run starts, not at import.
"""

from dagster import ConfigurableResource
from pyiceberg.catalog import Catalog

from pipeline.config.settings import Settings
from pipeline.lake.catalog import open_catalog


class IcebergResource(ConfigurableResource):
    """The Iceberg catalog icetrain reads and writes; the embedded SQLite one by default."""

    home: str | None = None
    catalog_name: str | None = None

    def settings(self) -> Settings:
        return Settings.from_env(home=self.home, catalog_name=self.catalog_name)

    def catalog(self) -> Catalog:
        return open_catalog(self.settings())


class MlflowResource(ConfigurableResource):
    """Where training runs are tracked; the SQLite store under ICETRAIN_HOME by default."""

    tracking_uri: str | None = None
    experiment: str | None = None


def combined_settings(iceberg: IcebergResource, mlflow: MlflowResource) -> Settings:
    """One ``Settings`` from both resources, for the training run."""
    return Settings.from_env(
        home=iceberg.home,
        catalog_name=iceberg.catalog_name,
        mlflow_tracking_uri=mlflow.tracking_uri,
        experiment=mlflow.experiment,
    )
