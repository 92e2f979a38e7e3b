"""The fraud demo's whole story, in Dagster over ten simulated days.

Transactions arrive daily and their chargebacks three days later; the champion scores each
day; from the drift day its predictions drift; once those days' outcomes land, its realized
PR AUC falls, the degradation sensor retrains, the new model becomes champion and scores
the next day.
"""

from pathlib import Path

from dagster import AssetKey, RunRequest, SkipReason, build_sensor_context, instance_for_test, materialize

from assets.demo import chargebacks_table, transactions_table
from assets.pipelines import project_definitions
from assets.resources import IcebergResource, MlflowResource
from pipeline.config.project import load_project
from pipeline.lake.catalog import load_table
from pipeline.tracking.client import tracking_client
from pipeline.tracking.reference import champion_version

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}
PROJECT = Path(__file__).resolve().parents[1] / "icetrain.yaml"
DRIFT_DAY, LAG = 6, 3


def day(n: int) -> str:
    return f"2026-11-{n:02d}"


def arrive(instance, n: int) -> None:
    """Day n's transactions land, and the chargebacks of day n - LAG."""
    config = {
        "ops": {
            "demo__transactions": {"config": {"rows_per_day": 5000, "drift_from": day(DRIFT_DAY), "drift": 1.5}},
            "demo__chargebacks": {"config": {"lag_days": LAG}},
        }
    }
    assert materialize(
        [transactions_table, chargebacks_table],
        partition_key=day(n),
        instance=instance,
        resources=RESOURCES,
        run_config=config,
    ).success


def run(definitions, instance, job: str, request: RunRequest | None = None):
    result = definitions.resolve_job_def(job).execute_in_process(
        instance=instance,
        run_config=request.run_config if request else None,
        tags=request.tags if request else None,
    )
    assert result.success
    return result


def metadata(result, *path: str) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(list(path))]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_ten_days_of_fraud_drift_degrade_retrain_and_promote(settings, catalog, monkeypatch) -> None:
    monkeypatch.setenv("ICETRAIN_CONFIG", str(PROJECT))
    definitions = project_definitions(load_project())
    client = tracking_client(settings)
    with instance_for_test() as instance:
        scoring = build_sensor_context(instance=instance, resources=RESOURCES)
        degradation = build_sensor_context(instance=instance, resources=RESOURCES)
        scoring_sensor = definitions.resolve_sensor_def("fraud_predict_new_snapshot")
        retrain_sensor = definitions.resolve_sensor_def("fraud_retrain_on_degradation")
        for n in (1, 2, 3):
            arrive(instance, n)
        run(definitions, instance, "fraud_train")
        assert str(champion_version(client, "fraud").version) == "1"

        story = {}
        for n in range(3, 11):
            if n > 3:
                arrive(instance, n)
            request = scoring_sensor(scoring)
            assert isinstance(request, RunRequest), f"day {n}: {request}"
            scored = run(definitions, instance, "fraud_predict", request)
            predictions = metadata(scored, "fraud", "predictions")
            monitored = checks(scored)
            shown = metadata(scored, "fraud", "monitoring")
            retrain = retrain_sensor(degradation)
            story[n] = {
                "version": predictions["model_version"],
                "drift": monitored["prediction_drift"],
                "realized": monitored["realized_performance"],
                "retrain": retrain,
                "monitoring": shown,
            }
            if isinstance(retrain, RunRequest):
                evaluation = metadata(run(definitions, instance, "fraud_train", retrain), "fraud", "evaluation")
                story[n]["evaluation"] = evaluation

    told = "\n".join(
        f"day {n}: v{s['version']} | {s['drift'].description} | {s['realized'].description} | {s['retrain']}"
        for n, s in story.items()
    )
    assert [story[n]["version"] for n in range(3, 11)] == ["1"] * 7 + ["2"], told
    assert all(story[n]["drift"].passed for n in range(3, DRIFT_DAY))
    assert (
        not story[DRIFT_DAY]["drift"].passed and "monitor.max_prediction_psi" in story[DRIFT_DAY]["drift"].description
    )
    assert all(story[n]["realized"].passed for n in range(3, DRIFT_DAY + LAG))
    assert not story[DRIFT_DAY + LAG]["realized"].passed
    requested = {n: seen["retrain"] for n, seen in story.items() if isinstance(seen["retrain"], RunRequest)}
    assert list(requested) == [DRIFT_DAY + LAG]
    drifted_input = str(load_table(catalog, "demo.transactions").snapshots()[DRIFT_DAY - 1].snapshot_id)
    assert requested[DRIFT_DAY + LAG].run_key == f"degraded:{drifted_input}"
    assert all(isinstance(story[n]["retrain"], SkipReason) for n in story if n not in requested)
    assert story[DRIFT_DAY + LAG]["evaluation"]["decision"] == "promoted to champion"
    assert str(champion_version(client, "fraud").version) == "2"
    shown = story[10]["monitoring"]
    assert shown["series"].startswith("![monitoring](data:image/png;base64,") and shown["champion_version"] == "2"
    rows = {r.data["window"]: r.data for r in shown["windows"].records}
    assert (
        rows[drifted_input]["degraded"]
        and rows[drifted_input]["drifted"]
        and rows[drifted_input]["model_version"] == "1"
    )

    version = client.get_model_version("fraud", "1")
    first = client.get_run(version.run_id)
    history = sorted(client.get_metric_history(first.info.run_id, "realized_pr_auc"), key=lambda m: m.step)
    assert len(history) == 5, "one point per judged window: days 1-3 (scored together), 4, 5, 6 and 7"
    (logged,) = first.outputs.model_outputs
    linked = {m.key for m in client.get_logged_model(logged.model_id).metrics or []}
    assert {"realized_pr_auc", "realized_roc_auc", "realized_coverage", "prediction_psi"} <= linked
    validation = first.data.metrics["val_pr_auc"]
    assert history[-1].value < validation / 2 < history[0].value, "the drifted days' realized PR AUC fell"
    psi = client.get_metric_history(first.info.run_id, "prediction_psi")
    assert len(psi) == 7, "every window v1 scored has its prediction drift recorded once"
