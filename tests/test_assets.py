"""The Dagster graph materializes in process; the pinned snapshot id flows to MLflow; a failing check blocks training."""

import pytest
from dagster import AssetKey, DagsterInstance, RunConfig, build_sensor_context, instance_for_test, materialize
from mlflow.tracking import MlflowClient

from assets.assets import digits_table, trained_model, training_data
from assets.checks import training_data_is_trainable
from assets.config import ModelConfig, TrainingDataConfig
from assets.definitions import defs
from assets.resources import IcebergResource, MlflowResource
from assets.sensors import new_snapshot_sensor
from pipeline.catalog import load_table
from pipeline.ingest import RUN_ID_PROPERTY, append_arrow
from pipeline.tensors import label_classes_property
from tests.conftest import all_runs, tabular_rows

GRAPH = [digits_table, training_data, trained_model, training_data_is_trainable]
RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}


def metadata(result, asset: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(asset)]
    return {key: value.value for key, value in event.materialization.metadata.items()}


@pytest.fixture
def instance():
    with instance_for_test() as test_instance:
        yield test_instance


def test_the_graph_pins_one_snapshot_from_ingest_to_mlflow(settings, catalog, instance: DagsterInstance) -> None:
    config = RunConfig(ops={"trained_model": ModelConfig(epochs=2)})
    result = materialize(GRAPH, instance=instance, resources=RESOURCES, run_config=config)

    assert result.success
    table = load_table(catalog, "demo.digits")
    assert len(table.snapshots()) == 3
    assert {s.summary.additional_properties[RUN_ID_PROPERTY] for s in table.snapshots()} == {result.run_id}

    pinned = metadata(result, "training_data")
    model = metadata(result, "trained_model")
    current = str(table.current_snapshot().snapshot_id)
    assert pinned["snapshot_id"] == model["snapshot_id"] == current
    assert pinned["row_count"] == 1797
    assert [c.name for c in pinned["dagster/column_schema"].columns] == ["id", "pixels", "label"]

    run = MlflowClient(settings.tracking_uri).get_run(model["mlflow_run_id"])
    assert run.data.tags["icetrain.snapshot_id"] == current
    assert run.data.tags["icetrain.dagster_run_id"] == result.run_id
    assert instance.get_latest_materialization_event(AssetKey("trained_model")) is not None


def test_the_model_trains_on_the_snapshot_the_config_pins(settings, catalog, instance) -> None:
    materialize([digits_table], instance=instance, resources=RESOURCES)
    first = load_table(catalog, "demo.digits").snapshots()[0].snapshot_id
    config = RunConfig(
        ops={"training_data": TrainingDataConfig(snapshot_id=str(first)), "trained_model": ModelConfig(epochs=1)}
    )
    result = materialize([training_data, trained_model, training_data_is_trainable], instance=instance, resources=RESOURCES, run_config=config)

    assert result.success
    assert metadata(result, "trained_model")["snapshot_id"] == str(first)
    assert metadata(result, "trained_model")["row_count"] == 900


def test_a_failing_check_blocks_training(settings, catalog, instance) -> None:
    rows = tabular_rows(0, 30)
    append_arrow(catalog, "demo.rows", rows, source="test", table_properties=label_classes_property(range(5)))
    config = RunConfig(ops={"training_data": TrainingDataConfig(table="demo.rows"), "trained_model": ModelConfig(epochs=1)})

    result = materialize(
        [training_data, trained_model, training_data_is_trainable],
        instance=instance,
        resources=RESOURCES,
        run_config=config,
        raise_on_error=False,
    )

    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "classes missing: 3, 4" in evaluation.description
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [AssetKey("training_data")]
    assert instance.get_latest_materialization_event(AssetKey("trained_model")) is None
    assert all_runs(settings) == []


def test_a_bad_snapshot_request_fails_the_step_with_the_message(settings, catalog, instance) -> None:
    materialize([digits_table], instance=instance, resources=RESOURCES)
    config = RunConfig(ops={"training_data": TrainingDataConfig(ref="no-such-tag")})
    result = materialize([training_data], instance=instance, resources=RESOURCES, run_config=config, raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no tag or branch 'no-such-tag'" in failure.step_failure_data.user_failure_data.description


def test_the_sensor_requests_a_run_pinned_to_each_new_snapshot(settings, catalog, instance) -> None:
    sensor_resources = {"iceberg": IcebergResource()}
    with build_sensor_context(instance=instance, resources=sensor_resources) as context:
        assert "does not exist" in new_snapshot_sensor(context).skip_message

    materialize([digits_table], instance=instance, resources=RESOURCES)
    current = str(load_table(catalog, "demo.digits").current_snapshot().snapshot_id)
    with build_sensor_context(instance=instance, resources=sensor_resources) as context:
        request = new_snapshot_sensor(context)
        assert request.run_key == current
        assert request.run_config["ops"]["training_data"]["config"]["snapshot_id"] == current
        assert "no new snapshot" in new_snapshot_sensor(context).skip_message


def test_definitions_load_with_every_job_schedule_and_sensor() -> None:
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"demo_job", "train_job"}
    assert defs.resolve_schedule_def("nightly_retrain").cron_schedule == "0 3 * * *"
    assert defs.resolve_sensor_def("new_snapshot_sensor").job_name == "train_job"


