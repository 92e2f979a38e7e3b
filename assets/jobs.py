"""A pipeline's retraining job: pin a snapshot, run the gate, train."""

from dagster import AssetSelection, define_asset_job

from assets.keys import evaluation_key, monitoring_key, predictions_key, trained_model_key, training_data_key
from pipeline.config.project import Pipeline


def job_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}_train"


def train_job(pipeline: Pipeline):
    """The job ``NAME_train``: the pipeline's training data, trained model and (with a registered model) evaluation."""
    return define_asset_job(
        job_name(pipeline),
        selection=AssetSelection.assets(
            training_data_key(pipeline),
            trained_model_key(pipeline),
            *([evaluation_key(pipeline)] if pipeline.config.tracking.registered_model else []),
        ),
        description=f"Pin a snapshot of {pipeline.table}, check it, and train pipeline {pipeline.name!r}.",
    )


def predict_job_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}_predict"


def predict_job(pipeline: Pipeline):
    """The job ``NAME_predict``: the champion scores a snapshot of the pipeline's scoring table, then the monitoring judges it."""
    return define_asset_job(
        predict_job_name(pipeline),
        selection=AssetSelection.assets(predictions_key(pipeline), monitoring_key(pipeline)),
        description=f"Score {pipeline.scoring_table} with the champion of pipeline {pipeline.name!r} into {pipeline.predictions_table}, then monitor.",
    )


def monitor_job_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}_monitor"


def monitor_job(pipeline: Pipeline):
    """The job ``NAME_monitor``: judge the predictions again (after outcomes arrive), without scoring."""
    return define_asset_job(
        monitor_job_name(pipeline),
        selection=AssetSelection.assets(monitoring_key(pipeline)),
        description=f"Judge {pipeline.predictions_table} against the outcomes that arrived (pipeline {pipeline.name!r}).",
    )
