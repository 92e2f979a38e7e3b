"""The Dagster definitions of declared pipelines materialize in process; the pinned id flows to MLflow; the gate blocks."""

import pytest
from dagster import AssetKey, DagsterInstance, RunConfig, build_sensor_context, instance_for_test, materialize
from mlflow.tracking import MlflowClient

from assets.assets import trained_model_asset, training_data_asset
from assets.checks import trainable_check
from assets.config import PinConfig
from assets.demo import digits_table
from assets.pipelines import project_definitions
from assets.resources import IcebergResource, MlflowResource
from assets.sensors import new_snapshot_sensor
from assets.jobs import train_job
from pipeline.catalog import load_table
from pipeline.ingest import RUN_ID_PROPERTY, append_arrow
from pipeline.project import parse_project
from pipeline.tensors import label_classes_property
from tests.conftest import all_runs, tabular_rows, write_appends

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}
DIGITS = parse_project({"pipelines": {"digits": {"data": {"table": "demo.digits"}, "optim": {"epochs": 2}}}}).pipeline("digits")
ROWS = parse_project({"pipelines": {"rows": {"data": {"table": "demo.rows"}, "optim": {"epochs": 1}}}}).pipeline("rows")


def pipeline_assets(pipeline) -> list:
    return [training_data_asset(pipeline), trained_model_asset(pipeline), trainable_check(pipeline)]


def metadata(result, key: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(key.split("/"))]
    return {name: value.value for name, value in event.materialization.metadata.items()}


@pytest.fixture
def instance():
    with instance_for_test() as test_instance:
        yield test_instance


def test_the_graph_pins_one_snapshot_from_ingest_to_mlflow(settings, catalog, instance: DagsterInstance, monkeypatch) -> None:
    monkeypatch.setenv("ICETRAIN_MLFLOW_UI", "http://127.0.0.1:5999")
    result = materialize([digits_table, *pipeline_assets(DIGITS)], instance=instance, resources=RESOURCES)

    assert result.success
    table = load_table(catalog, "demo.digits")
    assert len(table.snapshots()) == 3
    assert {s.summary.additional_properties[RUN_ID_PROPERTY] for s in table.snapshots()} == {result.run_id}

    pinned = metadata(result, "digits/training_data")
    model = metadata(result, "digits/trained_model")
    current = str(table.current_snapshot().snapshot_id)
    assert pinned["snapshot_id"] == model["snapshot_id"] == current
    assert pinned["row_count"] == 1797
    assert [c.name for c in pinned["dagster/column_schema"].columns] == ["id", "pixels", "label"]

    run = MlflowClient(settings.tracking_uri).get_run(model["mlflow_run_id"])
    assert run.data.tags["icetrain.snapshot_id"] == current
    assert model["mlflow_run"] == f"http://127.0.0.1:5999/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert model["mlflow_model"].startswith(f"http://127.0.0.1:5999/#/experiments/{run.info.experiment_id}/models/m-")
    assert model["learning_curves"].startswith("![learning curves](data:image/png;base64,iVBOR")
    assert run.data.tags["icetrain.launched_by"] == "dagster" and run.info.run_name == f"digits@{current}"
    assert f"Dagster run: `{result.run_id}`" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["icetrain.dagster_run_id"] == result.run_id
    assert run.data.tags["icetrain.pipeline"] == "digits"
    assert instance.get_latest_materialization_event(AssetKey(["digits", "trained_model"])) is not None


def test_the_model_trains_on_the_snapshot_and_overrides_the_run_config_pins(settings, catalog, instance) -> None:
    materialize([digits_table], instance=instance, resources=RESOURCES)
    first = load_table(catalog, "demo.digits").snapshots()[0].snapshot_id
    config = RunConfig(ops={"digits__training_data": PinConfig(snapshot_id=str(first), overrides=["optim.epochs=1", "data.filter=label < 5"])})
    result = materialize(pipeline_assets(DIGITS), instance=instance, resources=RESOURCES, run_config=config)

    assert result.success
    model = metadata(result, "digits/trained_model")
    assert model["snapshot_id"] == str(first)
    (run,) = all_runs(settings)
    assert (run.data.params["optim.epochs"], run.data.params["data.filter"]) == ("1", "label < 5")
    assert model["row_count"] == sum(1 for v in load_table(catalog, "demo.digits").scan(snapshot_id=first).to_arrow()["label"].to_pylist() if v < 5)


def test_a_failing_gate_blocks_training(settings, catalog, instance) -> None:
    rows = tabular_rows(0, 30)
    append_arrow(catalog, "demo.rows", rows, source="test", table_properties=label_classes_property(range(2)))

    result = materialize(pipeline_assets(ROWS), instance=instance, resources=RESOURCES, raise_on_error=False)

    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "label value 2 is not one of the declared classes 0, 1" in evaluation.description
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [AssetKey(["rows", "training_data"])]
    assert instance.get_latest_materialization_event(AssetKey(["rows", "trained_model"])) is None
    assert all_runs(settings) == []


def test_a_missing_declared_class_warns_without_blocking(settings, catalog, instance) -> None:
    rows = tabular_rows(0, 30)
    append_arrow(catalog, "demo.rows", rows, source="test", table_properties=label_classes_property(range(5)))

    result = materialize(pipeline_assets(ROWS), instance=instance, resources=RESOURCES)

    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity.value == "WARN"
    assert evaluation.description == "classes missing: 3, 4"
    assert AssetKey(["rows", "trained_model"]) in [e.asset_key for e in result.get_asset_materialization_events()]


def test_a_bad_snapshot_request_fails_the_step_with_the_message(settings, catalog, instance) -> None:
    materialize([digits_table], instance=instance, resources=RESOURCES)
    config = RunConfig(ops={"digits__training_data": PinConfig(ref="no-such-tag")})
    result = materialize([training_data_asset(DIGITS)], instance=instance, resources=RESOURCES, run_config=config, raise_on_error=False)
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no tag or branch 'no-such-tag'" in failure.step_failure_data.user_failure_data.description


def test_the_sensor_records_its_first_snapshot_then_requests_a_run_per_new_one(settings, catalog, instance) -> None:
    sensor = new_snapshot_sensor(ROWS, train_job(ROWS))
    resources = {"iceberg": IcebergResource()}
    with build_sensor_context(instance=instance, resources=resources) as context:
        assert "no snapshot yet" in sensor(context).skip_message
        write_appends(catalog, "demo.rows", [20])
        first = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        request = sensor(context)
        assert request.run_key == first, "a table that had no snapshot when the sensor started trains on its first one"
        assert "no new snapshot" in sensor(context).skip_message

    with build_sensor_context(instance=instance, resources=resources) as fresh:
        message = sensor(fresh).skip_message
        assert f"recorded snapshot {first}" in message and fresh.cursor == first
        append_arrow(catalog, "demo.rows", tabular_rows(20, 10), source="test")
        current = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        request = sensor(fresh)
        assert request.run_key == current
        assert request.run_config["ops"]["rows__training_data"]["config"]["snapshot_id"] == current


def test_a_pipeline_that_trains_on_its_first_snapshot_says_so(settings, catalog, instance) -> None:
    eager = parse_project({"pipelines": {"rows": {"data": {"table": "demo.rows"}, "retrain": {"train_on_first_snapshot": True}}}}).pipeline("rows")
    write_appends(catalog, "demo.rows", [20])
    with build_sensor_context(instance=instance, resources={"iceberg": IcebergResource()}) as context:
        request = new_snapshot_sensor(eager, train_job(eager))(context)
    assert request.run_key == str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)


def test_each_declared_pipeline_gets_its_own_definitions_and_only_its_table_edge() -> None:
    project = parse_project(
        {
            "pipelines": {
                "digits": {"data": {"table": "demo.digits"}},
                "churn": {"data": {"table": "crm.customers", "label": "churned"}, "retrain": {"schedule": "0 5 * * 1", "sensor_on": True}},
            },
            "dagster": {"definitions": ["assets.demo:defs"]},
        }
    )
    defs = project_definitions(project)

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"demo/digits", "crm/customers", "digits/training_data", "digits/trained_model", "churn/training_data", "churn/trained_model"}
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey(["churn", "training_data"])).parent_keys == {AssetKey(["crm", "customers"])}
    assert graph.get(AssetKey(["digits", "training_data"])).parent_keys == {AssetKey(["demo", "digits"])}
    assert not graph.get(AssetKey(["crm", "customers"])).is_materializable
    assert defs.resolve_schedule_def("churn_schedule").cron_schedule == "0 5 * * 1"
    assert defs.resolve_sensor_def("churn_new_snapshot").job_name == "churn_train"
    assert defs.resolve_sensor_def("churn_new_snapshot").default_status.value == "RUNNING"
    assert defs.resolve_sensor_def("digits_new_snapshot").default_status.value == "STOPPED"
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"demo_job", "digits_train", "churn_train"}
