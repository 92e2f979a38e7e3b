"""Monitoring a champion: windows judged against its own validation records, numbers in MLflow once, mistakes in one line."""

import os
from pathlib import Path

import pyarrow as pa
import yaml

from icetrain.cli import main
from pipeline.config.project import load_project
from pipeline.config.settings import Settings
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from pipeline.tracking.client import tracking_client
from training.monitor import MonitorRequest, monitor


def declare_monitor(**section) -> None:
    """Give the loans pipeline in force a ``monitor`` section."""
    path = Path(os.environ["ICETRAIN_CONFIG"])
    project = yaml.safe_load(path.read_text())
    project["pipelines"]["loans"]["monitor"] = section
    path.write_text(yaml.safe_dump(project))


def test_with_nothing_scored_yet_every_check_says_so_and_it_is_not_an_error(settings, loans_champion, capsys) -> None:
    capsys.readouterr()
    assert main(["monitor", "--pipeline", "loans"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "champion: 1" in out[0]
    for name in ("prediction_drift", "input_drift", "realized_performance"):
        assert f"{name}: passed: no predictions in bank.loans_predictions yet: nothing to judge" in out


def test_the_label_in_a_later_snapshot_judges_the_window_and_mlflow_gets_each_number_once(
    settings, catalog, loans_champion
) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    loans = load_project().pipeline("loans")
    found = monitor(Settings.from_env(), MonitorRequest.of(loans))

    (window,) = found.windows
    scored = load_table(catalog, "bank.loans_predictions").current_snapshot().summary.additional_properties
    assert window.window.window == scored["icetrain.input.snapshot-id"] and window.version == "1" and window.champion
    assert window.window.coverage == 1.0 and window.judged and not window.degraded
    run = tracking_client(settings).get_run(loans_champion)
    assert window.reference == run.data.metrics["val_pr_auc"]
    assert window.prediction_psi is not None and window.prediction_psi < 0.25 and not window.drifted
    checks = {check.name: check for check in found.checks}
    assert all(check.passed for check in checks.values()), found.report()
    assert "realized pr_auc" in checks["realized_performance"].text
    assert found.input_drift and max(found.input_drift.values()) < 0.01, "the scored rows are the training snapshot's"

    history = tracking_client(settings).get_metric_history(loans_champion, "realized_pr_auc")
    assert [m.value for m in history] == [window.value("pr_auc")]
    assert found.recorded >= 6
    again = monitor(Settings.from_env(), MonitorRequest.of(loans))
    assert again.recorded == 0, "a window's numbers are recorded once"
    assert len(tracking_client(settings).get_metric_history(loans_champion, "prediction_psi")) == 1


def test_an_outcomes_table_without_the_key_is_one_line_and_records_nothing(
    settings, catalog, loans_champion, capsys
) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    append_arrow(catalog, "bank.outcomes", pa.table({"customer": [1, 2], "defaulted": [0, 1]}), source="test")
    declare_monitor(outcomes="bank.outcomes")
    capsys.readouterr()
    assert main(["monitor", "--pipeline", "loans"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "table 'bank.outcomes' has no column(s) application_id" in err[0], err
    assert tracking_client(settings).get_metric_history(loans_champion, "prediction_psi") == []

    declare_monitor(window="hourly")
    assert main(["monitor", "--pipeline", "loans"]) == 1
    assert "monitor.window" in capsys.readouterr().err


def test_the_degradation_sensor_retrains_once_per_breached_window_of_the_champion(
    settings, catalog, loans_champion
) -> None:
    from dataclasses import replace

    from dagster import (
        AssetMaterialization,
        MetadataValue,
        RunRequest,
        SkipReason,
        build_sensor_context,
        instance_for_test,
    )

    from assets.resources import IcebergResource
    from assets.sensors import degradation_sensor

    loans = load_project().pipeline("loans")
    on = replace(loans, config=loans.config.updated({"retrain.on_degradation": True}))
    drift_only = replace(loans, config=loans.config.updated({"retrain.on_prediction_drift": True}))
    resources = {"iceberg": IcebergResource()}
    with instance_for_test() as instance:
        with build_sensor_context(instance=instance, resources=resources) as context:
            waiting = degradation_sensor(on)(context)
        assert isinstance(waiting, SkipReason) and "loans/monitoring was never materialized" in waiting.skip_message

        breach = {"window": "42", "model_version": "1", "realized_pr_auc": 0.1, "validation_pr_auc": 0.5}
        instance.report_runless_asset_event(
            AssetMaterialization(
                "loans/monitoring",
                metadata={
                    "degraded_windows": MetadataValue.json([breach]),
                    "drifted_windows": MetadataValue.json([{**breach, "window": "43"}]),
                },
            )
        )
        with build_sensor_context(instance=instance, resources=resources) as context:
            degraded = degradation_sensor(on)(context)
            drifted = degradation_sensor(drift_only)(context)
    assert isinstance(degraded, RunRequest) and degraded.run_key == "degraded:42"
    assert degraded.tags["icetrain/trigger"] == "degraded" and degraded.tags["icetrain/model_version"] == "1"
    pinned = load_table(catalog, "bank.applications").current_snapshot().snapshot_id
    assert degraded.run_config["ops"]["loans__training_data"]["config"]["snapshot_id"] == str(pinned)
    assert isinstance(drifted, RunRequest) and drifted.run_key == "drift:43"


def test_an_mlflow_that_does_not_answer_is_one_line_not_a_wait(settings, loans_champion, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    capsys.readouterr()
    for command in (["monitor", "--pipeline", "loans"], ["predict", "--pipeline", "loans"]):
        assert main(command) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "MLflow tracking server http://127.0.0.1:9 does not answer" in err[0], err
