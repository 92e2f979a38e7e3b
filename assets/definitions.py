"""The code location: collects icetrain's Dagster definitions, nothing else."""

from dagster import Definitions

from assets.assets import digits_table, trained_model, training_data
from assets.checks import training_data_is_trainable
from assets.jobs import demo_job, train_job
from assets.resources import IcebergResource, MlflowResource
from assets.schedules import nightly_retrain
from assets.sensors import new_snapshot_sensor

defs = Definitions(
    assets=[digits_table, training_data, trained_model],
    asset_checks=[training_data_is_trainable],
    jobs=[demo_job, train_job],
    schedules=[nightly_retrain],
    sensors=[new_snapshot_sensor],
    resources={"iceberg": IcebergResource(), "mlflow": MlflowResource()},
)
