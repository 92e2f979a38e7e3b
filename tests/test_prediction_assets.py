"""A pipeline that registers its models gets NAME/predictions: the champion scores new snapshots, from a sensor or a schedule."""

import pytest
from dagster import (
    AssetKey,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from assets.assets import predictions_asset
from assets.pipelines import project_definitions
from assets.resources import IcebergResource, MlflowResource
from assets.schedules import scoring_schedule
from assets.sensors import scoring_sensor
from icetrain.cli import main
from pipeline.config.project import load_project, parse_project
from pipeline.demo.applications import applications
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}


@pytest.fixture
def loans(loans_champion):
    return load_project().pipeline("loans")


@pytest.fixture
def instance():
    with instance_for_test() as test_instance:
        yield test_instance


def materialized(result) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(["loans", "predictions"])
    ]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_a_registering_pipeline_gets_the_predictions_asset_job_sensor_and_schedule() -> None:
    project = {
        "pipelines": {"loans": {"data": {"table": "bank.applications"}, "tracking": {"registered_model": "loans"}}}
    }
    definitions = project_definitions(parse_project(project))
    graph = definitions.resolve_asset_graph()
    assert AssetKey(["loans", "predictions"]) in graph.get_all_asset_keys()
    assert AssetKey(["loans", "evaluation"]) in graph.get(AssetKey(["loans", "predictions"])).parent_keys
    assert definitions.resolve_job_def("loans_predict") is not None
    assert definitions.resolve_sensor_def("loans_predict_new_snapshot") is not None
    assert definitions.resolve_schedule_def("loans_predict_schedule") is not None
    monitoring = graph.get(AssetKey(["loans", "monitoring"]))
    assert AssetKey(["loans", "predictions"]) in monitoring.parent_keys
    assert {key.name for key in monitoring.check_keys} == {"prediction_drift", "input_drift", "realized_performance"}
    assert definitions.resolve_job_def("loans_monitor") is not None
    assert definitions.resolve_sensor_def("loans_retrain_on_degradation").default_status.value == "STOPPED"


def test_the_champion_scores_each_new_snapshots_rows_once(settings, catalog, loans, instance) -> None:
    first = materialize([predictions_asset(loans)], instance=instance, resources=RESOURCES)
    shown = materialized(first)
    assert shown["rows_scored"] == 3000 and shown["model_version"] == "1"
    assert shown["input_snapshot_id"] == str(load_table(catalog, "bank.applications").current_snapshot().snapshot_id)
    assert 0 <= shown["prediction_drift_psi"] < 0.25, (
        "the champion scores its own training rows much as its validation rows"
    )
    assert shown["score_distribution"].startswith("![score distribution](data:image/png;base64,")

    append_arrow(catalog, "bank.applications", applications(3500).slice(3000), source="test")
    second = materialized(materialize([predictions_asset(loans)], instance=instance, resources=RESOURCES))
    assert second["rows_scored"] == 500 and second["scored_since_snapshot_id"] == shown["input_snapshot_id"]
    table = load_table(catalog, "bank.loans_predictions")
    assert len(table.snapshots()) == 2 and table.scan().to_arrow().num_rows == 3500
    summary = table.current_snapshot().summary.additional_properties
    assert summary["icetrain.dagster-run-id"] and summary["icetrain.model.version"] == "1"


def test_the_sensor_pins_snapshot_and_champion_version_once_each(settings, catalog, loans, instance) -> None:
    sensor = scoring_sensor(loans)
    with build_sensor_context(instance=instance, resources=RESOURCES) as context:
        request = sensor(context)
        assert isinstance(request, RunRequest)
        snapshot = str(load_table(catalog, "bank.applications").current_snapshot().snapshot_id)
        assert request.run_key == f"{snapshot}:1"
        config = request.run_config["ops"]["loans__predictions"]["config"]
        assert config == {"snapshot_id": snapshot, "model_version": "1"}
        assert isinstance(sensor(context), SkipReason)
        append_arrow(catalog, "bank.applications", applications(3200).slice(3000), source="test")
        assert isinstance(sensor(context), RunRequest)

        from pipeline.tracking.client import tracking_client

        tracking_client(settings).delete_registered_model_alias("loans", "champion")
        append_arrow(catalog, "bank.applications", applications(3300).slice(3200), source="test")
        skipped = sensor(context)
    assert isinstance(skipped, SkipReason) and "has no champion yet" in skipped.skip_message, "without one it waits"


def test_the_schedule_skips_a_snapshot_already_scored(settings, catalog, loans, instance) -> None:
    schedule = scoring_schedule(loans)
    with build_schedule_context(instance=instance, resources=RESOURCES) as context:
        request = schedule(context)
    assert isinstance(request, RunRequest)
    assert main(["predict", "--pipeline", "loans"]) == 0
    with build_schedule_context(instance=instance, resources=RESOURCES) as context:
        skipped = schedule(context)
    assert isinstance(skipped, SkipReason) and "already scored" in skipped.skip_message
