"""Declared pipelines -> Dagster definitions: per pipeline, its assets, check, job, schedule and sensor.

Every name is derived from the pipeline's name, so pipelines never collide, and each
pipeline's training data depends only on its own table's asset key. Tables that no loaded
definitions produce appear as external Iceberg assets.
"""

from collections.abc import Sequence

from dagster import AssetKey, AssetsDefinition, AssetSpec, Definitions

from assets.assets import evaluation_asset, predictions_asset, trained_model_asset, training_data_asset
from assets.checks import quality_checks, trainable_check
from assets.jobs import monitor_job, predict_job, train_job
from assets.keys import table_key
from assets.monitoring import monitoring_asset
from assets.resources import IcebergResource, MlflowResource
from assets.schedules import retrain_schedule, scoring_schedule
from assets.sensors import degradation_sensor, new_snapshot_sensor, scoring_sensor
from pipeline.config.project import Pipeline, Project
from pipeline.errors import ConfigError


def pipeline_definitions(pipeline: Pipeline) -> Definitions:
    """The assets, blocking check, job, schedule and sensor of one pipeline."""
    registers = bool(pipeline.config.tracking.registered_model)
    champion = (
        [evaluation_asset(pipeline), predictions_asset(pipeline), monitoring_asset(pipeline)] if registers else []
    )
    return Definitions(
        assets=[training_data_asset(pipeline), trained_model_asset(pipeline), *champion],
        asset_checks=[trainable_check(pipeline), *quality_checks(pipeline)],
        jobs=[train_job(pipeline), *([predict_job(pipeline), monitor_job(pipeline)] if registers else [])],
        schedules=[retrain_schedule(pipeline), *([scoring_schedule(pipeline)] if registers else [])],
        sensors=[
            new_snapshot_sensor(pipeline),
            *([scoring_sensor(pipeline), degradation_sensor(pipeline)] if registers else []),
        ],
    )


def project_definitions(project: Project, extra: Sequence[Definitions] = ()) -> Definitions:
    """Every declared pipeline, the extra definitions the project names, the tables as assets, and the resources."""
    loaded = [*extra, *(_load(reference) for reference in project.definitions)]
    produced: set[AssetKey] = set()
    for definitions in loaded:
        for item in definitions.assets or ():
            produced.update(item.keys if isinstance(item, AssetsDefinition) else [getattr(item, "key", None)])
    tables = sorted(
        {
            name
            for pipeline in project.pipelines.values()
            for name in (pipeline.table, pipeline.scoring_table, pipeline.config.monitor.outcomes)
            if name
        }
    )
    external = [
        AssetSpec(
            table_key(table),
            kinds={"iceberg"},
            description=f"Iceberg table {table}, written outside this code location.",
        )
        for table in tables
        if table_key(table) not in produced
    ]
    return Definitions.merge(
        *loaded,
        *(pipeline_definitions(pipeline) for pipeline in project.pipelines.values()),
        Definitions(assets=external, resources={"iceberg": IcebergResource(), "mlflow": MlflowResource()}),
    )


def _load(reference: str) -> Definitions:
    """``module:attribute`` naming a ``Definitions`` object.

    Raises:
        ConfigError: it cannot be imported or is not a ``Definitions``.
    """
    import importlib

    module_name, _, attribute = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"dagster.definitions: cannot load {reference!r} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(found, Definitions):
        raise ConfigError(f"dagster.definitions: {reference!r} is a {type(found).__name__}, not a dagster.Definitions")
    return found
