"""Asset keys: a table's (its identifier's parts) and each pipeline's (``NAME/...``)."""

from dagster import AssetKey

from pipeline.config.project import Pipeline


def table_key(table: str) -> AssetKey:
    """The asset key of an Iceberg table: its identifier's parts, e.g. ``demo/digits``."""
    return AssetKey(table.split("."))


def training_data_key(pipeline: Pipeline) -> AssetKey:
    return AssetKey([pipeline.name, "training_data"])


def trained_model_key(pipeline: Pipeline) -> AssetKey:
    return AssetKey([pipeline.name, "trained_model"])


def evaluation_key(pipeline: Pipeline) -> AssetKey:
    return AssetKey([pipeline.name, "evaluation"])


def predictions_key(pipeline: Pipeline) -> AssetKey:
    return AssetKey([pipeline.name, "predictions"])


def monitoring_key(pipeline: Pipeline) -> AssetKey:
    return AssetKey([pipeline.name, "monitoring"])
