"""Data-quality gates in Dagster: schema contract by field id, feature completeness, drift against the last model's data."""

from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetKey, instance_for_test, materialize

from assets.assets import trained_model_asset, training_data_asset
from assets.checks import quality_checks, trainable_check
from assets.resources import IcebergResource, MlflowResource
from pipeline.config.project import load_project, parse_project
from pipeline.demo.transactions import ingest_day
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows, write_appends

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}


def everything(pipeline) -> list:
    return [
        training_data_asset(pipeline),
        trained_model_asset(pipeline),
        trainable_check(pipeline),
        *quality_checks(pipeline),
    ]


def gates(pipeline) -> list:
    return [training_data_asset(pipeline), trainable_check(pipeline), *quality_checks(pipeline)]


def evaluations(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def instance():
    with instance_for_test() as test_instance:
        yield test_instance


def test_drift_passes_on_undrifted_days_and_fails_on_drifted_ones_naming_the_features(
    settings, catalog, instance
) -> None:
    fraud = load_project(Path(__file__).resolve().parents[1] / "icetrain.yaml").pipeline("fraud")
    fraud = parse_project(
        {
            "pipelines": {
                "fraud": {**fraud.config.model_dump(mode="json"), "optim": {"epochs": 1, "class_weights": "balanced"}}
            }
        }
    ).pipeline("fraud")
    for day in (1, 2):
        ingest_day(catalog, date(2026, 11, day), 2000)
    assert materialize(everything(fraud), instance=instance, resources=RESOURCES).success

    ingest_day(catalog, date(2026, 11, 3), 2000)
    calm = evaluations(materialize(gates(fraud), instance=instance, resources=RESOURCES))
    assert calm["no_drift"].passed, calm["no_drift"].description
    assert calm["schema_contract"].passed and calm["features_complete"].passed

    for day in (4, 5, 6, 7, 8):
        ingest_day(catalog, date(2026, 11, day), 2000, drift_from=date(2026, 11, 4))
    drifted = materialize(gates(fraud), instance=instance, resources=RESOURCES, raise_on_error=False)
    check = evaluations(drifted)["no_drift"]
    assert not check.passed
    assert "velocity_24h PSI" in check.description and "ip_risk PSI" in check.description
    assert check.metadata["psi"].value["ip_risk"] > 0.25 and check.metadata["psi"].value["merchant_risk"] < 0.1
    (pinned,) = [
        e for e in drifted.get_asset_materialization_events() if e.asset_key == AssetKey(["fraud", "training_data"])
    ]
    records = [record.data for record in pinned.materialization.metadata["feature_profile"].value.records]
    profile = {record["feature"]: record for record in records}
    assert profile["ip_risk"]["psi"] == pytest.approx(check.metadata["psi"].value["ip_risk"], abs=1e-4)
    assert profile["amount"]["nulls"] == 0 and profile["amount"]["mean"] > 0 and profile["amount"]["reference_mean"] > 0
    assert [r["psi"] for r in records] == sorted((r["psi"] for r in records), reverse=True), "most drifted first"
    assert check.metadata["worst_psi"].value == pytest.approx(max(check.metadata["psi"].value.values()), abs=1e-4)
    assert isinstance(check.metadata["worst_psi"].value, float) and check.metadata["max_psi"].value == "0.25"
    (failure,) = [e for e in drifted.all_events if e.is_step_failure and e.step_key.endswith("no_drift")]
    reason = failure.step_failure_data.user_failure_data.description
    assert reason.startswith("gate no_drift failed: ") and "ip_risk PSI" in reason and "\n" not in reason


def test_a_renamed_feature_breaks_the_contract_and_says_so(settings, catalog, instance) -> None:
    rows = parse_project(
        {"pipelines": {"rows": {"data": {"table": "demo.rows", "features": ["x1", "x2"]}, "optim": {"epochs": 1}}}}
    ).pipeline("rows")
    write_appends(catalog, "demo.rows", [60])
    assert materialize(everything(rows), instance=instance, resources=RESOURCES).success
    with load_table(catalog, "demo.rows").update_schema() as update:
        update.rename_column("x1", "feature_1")
    append_arrow(
        catalog, "demo.rows", tabular_rows(60, 20).rename_columns(["id", "feature_1", "x2", "label"]), source="test"
    )

    result = materialize(everything(rows), instance=instance, resources=RESOURCES, raise_on_error=False)

    checks = evaluations(result)
    assert not checks["schema_contract"].passed
    assert checks["schema_contract"].description == "feature x1 (field 2) was renamed to feature_1"
    assert not checks["is_trainable"].passed
    trained = [
        e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(["rows", "trained_model"])
    ]
    assert trained == []


def test_null_features_fail_the_completeness_gate(settings, catalog, instance) -> None:
    rows = parse_project({"pipelines": {"rows": {"data": {"table": "demo.rows"}}}}).pipeline("rows")
    data = tabular_rows(0, 40)
    holes = pa.array([None if i % 10 == 0 else v for i, v in enumerate(data["x2"].to_pylist())], pa.float64())
    append_arrow(catalog, "demo.rows", data.set_column(2, "x2", holes), source="test")

    checks = evaluations(materialize(gates(rows), instance=instance, resources=RESOURCES, raise_on_error=False))

    assert not checks["features_complete"].passed
    assert checks["features_complete"].description == "x2: 10.00% null or NaN (gates.max_null_fraction 0)"
    assert checks["features_complete"].metadata["nulls"].value == {"id": 0, "x1": 0, "x2": 4}


def test_the_digits_demo_pipeline_retrains_from_dagster_with_an_image_drift_measure(
    settings, catalog, digits, instance
) -> None:
    """After a first model, the gates profile the raw-bytes image column (pixel-byte histogram), never crash on it."""
    declared = load_project(Path(__file__).resolve().parents[1] / "icetrain.yaml").pipeline("digits")
    quick = parse_project(
        {"pipelines": {"digits": {**declared.config.model_dump(mode="json"), "optim": {"epochs": 1}}}}
    ).pipeline("digits")
    first = materialize(everything(quick), instance=instance, resources=RESOURCES)
    assert first.success

    again = materialize(everything(quick), instance=instance, resources=RESOURCES, raise_on_error=False)
    assert again.success, [e.message for e in again.all_events if e.is_failure]
    checks = evaluations(again)
    assert checks["no_drift"].passed and checks["features_complete"].passed, checks["no_drift"].description
    assert checks["no_drift"].metadata["psi"].value == {"pixels": pytest.approx(0.0, abs=1e-9)}
    (pinned,) = [
        e for e in again.get_asset_materialization_events() if e.asset_key == AssetKey(["digits", "training_data"])
    ]
    (image,) = pinned.materialization.metadata["feature_profile"].value.records
    assert image.data["feature"] == "pixels" and 0 < image.data["mean"] < 16


def test_the_cli_runs_the_same_gates_as_dagster_and_skip_gates_is_recorded(
    settings, catalog, instance, monkeypatch, capsys
) -> None:
    from icetrain.cli import main
    from tests.conftest import all_runs

    monkeypatch.setenv("ICETRAIN_CONFIG", str(Path(__file__).resolve().parents[1] / "icetrain.yaml"))
    quick = ["--set", "optim.epochs=1", "--no-progress"]
    for day in (1, 2):
        ingest_day(catalog, date(2026, 11, day), 2000)
    assert main(["train", "--pipeline", "fraud", *quick]) == 0
    (first,) = all_runs(settings)
    assert first.data.tags["icetrain.gates"] == "passed (no reference yet)"

    for day in (4, 5, 6, 7, 8):
        ingest_day(catalog, date(2026, 11, day), 2000, drift_from=date(2026, 11, 4))
    capsys.readouterr()
    assert main(["train", "--pipeline", "fraud", *quick]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("icetrain: error: gate no_drift failed for snapshot "), err
    assert (
        f"against reference snapshot {first.data.tags['icetrain.snapshot_id']}" in err[0]
        and "ip_risk PSI" in err[0]
        and "--skip-gates" in err[0]
    )
    assert len(all_runs(settings)) == 1, "a refused snapshot starts no run"

    fraud = load_project(Path(__file__).resolve().parents[1] / "icetrain.yaml").pipeline("fraud")
    blocked = materialize(gates(fraud), instance=instance, resources=RESOURCES, raise_on_error=False)
    assert not evaluations(blocked)["no_drift"].passed, "the Dagster job blocks the same data"

    assert main(["train", "--pipeline", "fraud", "--skip-gates", *quick]) == 0
    skipped = [run for run in all_runs(settings) if run.info.run_id != first.info.run_id]
    assert [run.data.tags["icetrain.gates"] for run in skipped] == ["skipped"]
