"""Champion and challenger: a new model takes the alias only when it is better on the same held-out rows."""

import pytest
from dagster import AssetKey, RunConfig, instance_for_test, materialize
from mlflow.tracking import MlflowClient

from assets.assets import evaluation_asset, trained_model_asset, training_data_asset
from assets.checks import trainable_check
from assets.config import PinConfig
from assets.resources import IcebergResource, MlflowResource
from pipeline.config.project import parse_project
from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows, write_appends

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}
ROWS = parse_project(
    {
        "pipelines": {
            "rows": {
                "data": {"table": "demo.rows"},
                "model": {"factory": "linear"},
                "tracking": {"registered_model": "rows-model"},
            }
        }
    }
).pipeline("rows")


def decide(instance, *overrides: str) -> dict:
    assets = [training_data_asset(ROWS), trained_model_asset(ROWS), evaluation_asset(ROWS), trainable_check(ROWS)]
    config = RunConfig(ops={"rows__training_data": PinConfig(overrides=list(overrides))})
    result = materialize(assets, instance=instance, resources=RESOURCES, run_config=config)
    assert result.success
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(["rows", "evaluation"])]
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_the_challenger_becomes_champion_only_when_better(settings, catalog) -> None:
    write_appends(catalog, "demo.rows", [300])
    client = MlflowClient(settings.tracking_uri)
    with instance_for_test() as instance:
        first = decide(instance, "optim.epochs=1", "optim.lr=0.0001")
        assert (first["decision"], first["challenger_version"], first["reason"]) == (
            "promoted to champion",
            "1",
            "no champion yet",
        )

        append_arrow(catalog, "demo.rows", tabular_rows(300, 100), source="test")
        better = decide(instance, "optim.epochs=15", "optim.lr=0.05")
        assert better["decision"] == "promoted to champion", better["reason"]
        assert better["challenger_score"] < better["champion_score"] and better["champion_version"] == "1"

        worse = decide(instance, "optim.epochs=1", "optim.lr=0.0001")
        assert worse["decision"] == "champion kept" and worse["champion_version"] == "2"

    assert str(client.get_model_version_by_alias("rows-model", "champion").version) == "2"
    snapshot = str(worse_snapshot(catalog))
    first_version, second, third = (client.get_model_version("rows-model", v).tags for v in ("1", "2", "3"))
    assert third["icetrain.eval.role"] == "challenger" and third["icetrain.eval.decision"].startswith(
        f"not promoted on snapshot {snapshot}; version 2 stays champion"
    )
    assert second["icetrain.eval.role"] == "champion" and second["icetrain.eval.decision"].startswith(
        f"champion; kept against version 3 on snapshot {snapshot}"
    )
    assert third["icetrain.eval.snapshot_id"] == second["icetrain.eval.snapshot_id"] == snapshot
    assert float(third["icetrain.eval.val_loss"]) == pytest.approx(worse["challenger_score"], rel=1e-5)
    assert float(second["icetrain.eval.val_loss"]) == pytest.approx(worse["champion_score"], rel=1e-5)
    assert first_version["icetrain.eval.role"] == "former champion" and first_version[
        "icetrain.eval.decision"
    ].startswith("replaced by version 2 on snapshot")
    assert "promoted" not in first_version["icetrain.eval.decision"]


def worse_snapshot(catalog) -> int:
    return catalog.load_table("demo.rows").current_snapshot().snapshot_id


def test_overlapping_runs_each_evaluate_the_model_their_own_run_trained(settings, catalog) -> None:
    """Run A trains; before A's evaluation starts, run B trains a newer model; A still scores A's."""
    from dagster import Definitions, HookContext, define_asset_job, success_hook

    write_appends(catalog, "demo.rows", [300])
    assets = [training_data_asset(ROWS), trained_model_asset(ROWS), evaluation_asset(ROWS), trainable_check(ROWS)]
    others: list = []

    with instance_for_test() as instance:

        @success_hook
        def another_run_trains_meanwhile(context: HookContext) -> None:
            if context.op.name == "rows__trained_model" and not others:
                others.append(
                    materialize(
                        assets[:2],
                        instance=instance,
                        resources=RESOURCES,
                        selection=["rows/training_data", "rows/trained_model"],
                    )
                )

        job = define_asset_job(
            "rows_overlapping",
            selection=["rows/training_data", "rows/trained_model", "rows/evaluation"],
            hooks={another_run_trains_meanwhile},
        )
        run_a = (
            Definitions(assets=assets, jobs=[job], resources=RESOURCES)
            .resolve_job_def("rows_overlapping")
            .execute_in_process(instance=instance)
        )
        assert run_a.success and others and others[0].success

        def model_of(result) -> str:
            (event,) = [
                e
                for e in result.get_asset_materialization_events()
                if e.asset_key == AssetKey(["rows", "trained_model"])
            ]
            return event.materialization.metadata["mlflow_run_id"].value

        (evaluated,) = [
            e for e in run_a.get_asset_materialization_events() if e.asset_key == AssetKey(["rows", "evaluation"])
        ]
        assert model_of(run_a) != model_of(others[0])
        assert evaluated.materialization.metadata["mlflow_run_id"].value == model_of(run_a), (
            "A's evaluation scored B's newer model"
        )
        newest = instance.get_latest_materialization_event(AssetKey(["rows", "trained_model"])).asset_materialization
        assert newest.metadata["mlflow_run_id"].value == model_of(others[0])

        alone = materialize([evaluation_asset(ROWS)], instance=instance, resources=RESOURCES, raise_on_error=False)
        (failure,) = [e for e in alone.all_events if e.is_step_failure]
        assert "this run trained no model to evaluate" in failure.step_failure_data.user_failure_data.description


def test_an_mlflow_that_cannot_be_reached_is_an_error_never_no_champion(settings, catalog, monkeypatch) -> None:
    import socket

    from assets.resources import MlflowResource as Mlflow
    from pipeline.config.settings import Settings
    from pipeline.errors import TrackingError
    from training.evaluate import champion_challenger

    write_appends(catalog, "demo.rows", [300])
    with instance_for_test() as instance:
        first = decide(instance, "optim.epochs=1")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once the probe closes
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")

        assets = [training_data_asset(ROWS), trained_model_asset(ROWS), evaluation_asset(ROWS), trainable_check(ROWS)]
        stopped = materialize(
            assets,
            instance=instance,
            resources={"iceberg": IcebergResource(), "mlflow": Mlflow(tracking_uri=dead)},
            raise_on_error=False,
        )
        (failure,) = [e for e in stopped.all_events if e.is_step_failure]
        reason = failure.step_failure_data.user_failure_data.description
        assert (
            failure.step_key == "rows__training_data"
            and reason.startswith(f"MLflow tracking server {dead} does not answer")
            and "\n" not in reason
        )

        with pytest.raises(TrackingError, match="cannot read MLflow run") as raised:
            champion_challenger(
                Settings.from_env(mlflow_tracking_uri=dead), first["mlflow_run_id"], "rows-model", "val_loss"
            )
        assert "\n" not in str(raised.value)

    versions = MlflowClient(settings.tracking_uri).search_model_versions("name = 'rows-model'")
    assert [str(v.version) for v in versions] == ["1"], "nothing was registered while MLflow could not be reached"
