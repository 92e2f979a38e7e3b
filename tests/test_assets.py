"""The Dagster definitions of declared pipelines materialize in process; the pinned id flows to MLflow; the gate blocks."""

import json
from datetime import UTC, date, datetime

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    RunConfig,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from mlflow.tracking import MlflowClient

from assets.assets import code_version, trained_model_asset, training_data_asset
from assets.checks import trainable_check
from assets.config import PinConfig
from assets.demo import digits_table
from assets.pipelines import project_definitions
from assets.resources import IcebergResource, MlflowResource
from assets.schedules import retrain_schedule
from assets.sensors import new_snapshot_sensor
from pipeline.config.project import parse_project
from pipeline.data.tensors import label_classes_property
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import RUN_ID_PROPERTY, append_arrow
from tests.conftest import all_runs, tabular_rows, write_appends

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}
DIGITS = parse_project({"pipelines": {"digits": {"data": {"table": "demo.digits"}, "optim": {"epochs": 2}}}}).pipeline(
    "digits"
)
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


def test_the_graph_pins_one_snapshot_from_ingest_to_mlflow(
    settings, catalog, instance: DagsterInstance, monkeypatch
) -> None:
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
    assert run.data.tags["icetrain.launched_by"] == "dagster" and run.info.run_name.startswith(f"digits@{current} 20")
    assert (
        f"Dagster run: [{result.run_id}](http://127.0.0.1:3000/runs/{result.run_id})"
        in run.data.tags["mlflow.note.content"]
    )
    assert run.data.tags["icetrain.dagster_run_id"] == result.run_id
    assert run.data.tags["icetrain.pipeline"] == "digits"
    assert instance.get_latest_materialization_event(AssetKey(["digits", "trained_model"])) is not None


def test_the_model_trains_on_the_snapshot_and_overrides_the_run_config_pins(settings, catalog, instance) -> None:
    materialize([digits_table], instance=instance, resources=RESOURCES)
    first = load_table(catalog, "demo.digits").snapshots()[0].snapshot_id
    config = RunConfig(
        ops={
            "digits__training_data": PinConfig(
                snapshot_id=str(first), overrides=["optim.epochs=1", "data.filter=label < 5"]
            )
        }
    )
    result = materialize(pipeline_assets(DIGITS), instance=instance, resources=RESOURCES, run_config=config)

    assert result.success
    model = metadata(result, "digits/trained_model")
    assert model["snapshot_id"] == str(first)
    (run,) = all_runs(settings)
    assert (run.data.params["optim.epochs"], run.data.params["data.filter"]) == ("1", "label < 5")
    assert model["row_count"] == sum(
        1 for v in load_table(catalog, "demo.digits").scan(snapshot_id=first).to_arrow()["label"].to_pylist() if v < 5
    )


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
    result = materialize(
        [training_data_asset(DIGITS)], instance=instance, resources=RESOURCES, run_config=config, raise_on_error=False
    )
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no tag or branch 'no-such-tag'" in failure.step_failure_data.user_failure_data.description


def test_the_sensor_records_its_first_snapshot_then_requests_a_run_per_new_one(settings, catalog, instance) -> None:
    sensor = new_snapshot_sensor(ROWS)
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
        assert f"recorded snapshot {first}" in message and json.loads(fresh.cursor)["seen"] == first
        append_arrow(catalog, "demo.rows", tabular_rows(20, 10), source="test")
        current = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        request = sensor(fresh)
        assert request.run_key == current
        assert request.run_config["ops"]["rows__training_data"]["config"]["snapshot_id"] == current


def test_a_pipeline_that_trains_on_its_first_snapshot_says_so(settings, catalog, instance) -> None:
    eager = parse_project(
        {"pipelines": {"rows": {"data": {"table": "demo.rows"}, "retrain": {"train_on_first_snapshot": True}}}}
    ).pipeline("rows")
    write_appends(catalog, "demo.rows", [20])
    with build_sensor_context(instance=instance, resources={"iceberg": IcebergResource()}) as context:
        request = new_snapshot_sensor(eager)(context)
    assert request.run_key == str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)


def test_each_declared_pipeline_gets_its_own_definitions_and_only_its_table_edge() -> None:
    project = parse_project(
        {
            "pipelines": {
                "digits": {"data": {"table": "demo.digits"}},
                "churn": {
                    "data": {"table": "crm.customers", "label": "churned"},
                    "retrain": {"schedule": "0 5 * * 1", "sensor_on": True},
                },
            },
            "dagster": {"definitions": ["assets.demo:defs"]},
        }
    )
    defs = project_definitions(project)

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {
        "demo/digits",
        "demo/transactions",
        "demo/chargebacks",
        "crm/customers",
        "digits/training_data",
        "digits/trained_model",
        "churn/training_data",
        "churn/trained_model",
    }
    graph = defs.resolve_asset_graph()
    assert graph.get(AssetKey(["churn", "training_data"])).parent_keys == {AssetKey(["crm", "customers"])}
    assert graph.get(AssetKey(["digits", "training_data"])).parent_keys == {AssetKey(["demo", "digits"])}
    assert not graph.get(AssetKey(["crm", "customers"])).is_materializable
    assert defs.resolve_schedule_def("churn_schedule").cron_schedule == "0 5 * * 1"
    assert defs.resolve_sensor_def("churn_new_snapshot").job_name == "churn_train"
    assert defs.resolve_sensor_def("churn_new_snapshot").default_status.value == "RUNNING"
    assert defs.resolve_sensor_def("digits_new_snapshot").default_status.value == "STOPPED"
    assert {job.name for job in defs.resolve_all_job_defs()} >= {
        "demo_job",
        "transactions_ingest",
        "digits_train",
        "churn_train",
    }


def test_the_sensor_waits_for_enough_new_rows_since_the_last_trained_model(settings, catalog, instance) -> None:
    pipeline = parse_project(
        {
            "pipelines": {
                "rows": {"data": {"table": "demo.rows"}, "optim": {"epochs": 1}, "retrain": {"min_new_rows": 50}}
            }
        }
    ).pipeline("rows")
    sensor = new_snapshot_sensor(pipeline)
    write_appends(catalog, "demo.rows", [60])
    with build_sensor_context(instance=instance, resources={"iceberg": IcebergResource()}) as context:
        assert "started" in sensor(context).skip_message
        append_arrow(catalog, "demo.rows", tabular_rows(60, 30), source="test")
        below = sensor(context).skip_message
        assert "adds 30 rows since snapshot" in below and "fewer than retrain.min_new_rows=50" in below
        append_arrow(catalog, "demo.rows", tabular_rows(90, 30), source="test")
        request = sensor(context)
        current = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        assert request.run_key == current and request.tags["icetrain/rows_added"] == "60"

        result = materialize(
            pipeline_assets(pipeline), instance=instance, resources=RESOURCES, run_config=request.run_config
        )
        assert result.success
        append_arrow(catalog, "demo.rows", tabular_rows(120, 20), source="test")
        after_training = sensor(context).skip_message
        assert f"adds 20 rows since snapshot {current} of the last trained model" in after_training


def test_the_sensor_skips_a_snapshot_that_was_already_trained(settings, catalog, instance) -> None:
    sensor = new_snapshot_sensor(ROWS)
    write_appends(catalog, "demo.rows", [40])
    with build_sensor_context(instance=instance, resources={"iceberg": IcebergResource()}) as context:
        assert "started" in sensor(context).skip_message
        append_arrow(catalog, "demo.rows", tabular_rows(40, 10), source="test")
        trained_by_hand = materialize(pipeline_assets(ROWS), instance=instance, resources=RESOURCES)
        current = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        model = metadata(trained_by_hand, "rows/trained_model")

        message = sensor(context).skip_message

    assert model["snapshot_id"] == current
    assert message == f"snapshot {current} of demo.rows was already trained (MLflow run {model['mlflow_run_id']})"


def test_the_nightly_schedule_pins_the_current_snapshot_and_skips_what_was_already_trained(
    settings, catalog, instance
) -> None:
    schedule = retrain_schedule(ROWS)
    night = datetime(2026, 11, 24, 3, tzinfo=UTC)
    with build_schedule_context(
        instance=instance, resources={"iceberg": IcebergResource()}, scheduled_execution_time=night
    ) as context:
        assert schedule(context).skip_message == "table demo.rows has no snapshot yet"
        write_appends(catalog, "demo.rows", [40])
        first = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        request = schedule(context)
        assert request.run_config["ops"]["rows__training_data"]["config"]["snapshot_id"] == first
        assert request.run_key.startswith(f"{first}:") and request.tags["icetrain/trigger"] == "schedule"

        append_arrow(
            catalog, "demo.rows", tabular_rows(40, 10), source="test"
        )  # committed after the tick: the run stays pinned
        result = materialize(
            pipeline_assets(ROWS),
            instance=instance,
            resources=RESOURCES,
            run_config=request.run_config,
            tags=request.tags,
        )
        assert result.success and metadata(result, "rows/trained_model")["snapshot_id"] == first
        second = str(load_table(catalog, "demo.rows").current_snapshot().snapshot_id)
        assert schedule(context).run_config["ops"]["rows__training_data"]["config"]["snapshot_id"] == second

        materialize(
            pipeline_assets(ROWS), instance=instance, resources=RESOURCES, run_config=schedule(context).run_config
        )
        skipped = schedule(context).skip_message
        retrained = parse_project(
            {"pipelines": {"rows": {"data": {"table": "demo.rows"}, "optim": {"epochs": 2}}}}
        ).pipeline("rows")
        after_code_change = retrain_schedule(retrained)(context)
    assert after_code_change.run_key == f"{second}:{code_version(retrained)}", "new code retrains on the same snapshot"
    assert (
        skipped.startswith("the last model (MLflow run ")
        and f"already trained on snapshot {second} of demo.rows" in skipped
    )


def test_training_data_carries_the_snapshot_id_as_its_data_version_and_a_code_version(
    settings, catalog, instance
) -> None:
    write_appends(catalog, "demo.rows", [40])
    result = materialize(pipeline_assets(ROWS), instance=instance, resources=RESOURCES)
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(["rows", "training_data"])
    ]
    assert event.materialization.tags["dagster/data_version"] == str(
        load_table(catalog, "demo.rows").current_snapshot().snapshot_id
    )
    changed = parse_project({"pipelines": {"rows": {"data": {"table": "demo.rows"}, "optim": {"epochs": 2}}}}).pipeline(
        "rows"
    )
    assert training_data_asset(ROWS).code_versions_by_key != training_data_asset(changed).code_versions_by_key


def test_transactions_arrive_one_day_per_partition_and_a_backfill_is_idempotent(settings, catalog, instance) -> None:
    from assets.demo import TransactionsConfig, transactions_table

    config = RunConfig(ops={"demo__transactions": TransactionsConfig(rows_per_day=300)})
    for day in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-02"):
        assert materialize(
            [transactions_table], instance=instance, resources=RESOURCES, partition_key=day, run_config=config
        ).success
    table = load_table(catalog, "demo.transactions")
    days = [s.summary.additional_properties.get("icetrain.partition") for s in table.snapshots()]
    assert days == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert table.scan().to_arrow().num_rows == 900
    schema = table.schema()
    assert [schema.find_column_name(i) for i in schema.identifier_field_ids] == ["transaction_id"]


def test_the_drift_knob_shifts_features_from_its_day() -> None:
    from pipeline.demo.transactions import transactions_day

    before = transactions_day(date(2026, 11, 5), 5000)
    after = transactions_day(date(2026, 11, 5), 5000, drift_from=date(2026, 11, 4))
    assert transactions_day(date(2026, 11, 5), 5000).equals(before)
    assert after["amount"].to_numpy().mean() > 1.5 * before["amount"].to_numpy().mean()
    assert 0.005 < before["is_fraud"].to_numpy().mean() < 0.04
    assert transactions_day(date(2026, 11, 3), 100, drift_from=date(2026, 11, 4)).equals(
        transactions_day(date(2026, 11, 3), 100)
    )


def test_the_fraud_pipeline_trains_a_weighted_binary_classifier_with_ranking_metrics(settings, catalog) -> None:
    from pathlib import Path

    from pipeline.config.project import load_project
    from pipeline.demo.transactions import ingest_day
    from training.train import train

    for day in (1, 2, 3, 4):
        ingest_day(catalog, date(2026, 11, day), 3000)
    fraud = load_project(Path(__file__).resolve().parents[1] / "icetrain.yaml").pipeline("fraud")

    result = train(settings, fraud.with_overrides(["optim.epochs=4"]), pipeline=fraud.name, progress_bar=False)

    metrics = result.final_metrics
    assert {"val_precision", "val_recall", "val_roc_auc", "val_pr_auc"} <= set(metrics)
    assert metrics["val_roc_auc"] > 0.75, metrics
    assert metrics["val_pr_auc"] > 0.05, metrics
    assert result.classes == (0, 1) and result.row_count == 12000
