"""Champion and challenger: a new model takes the alias only when it is better on the same held-out rows."""

import pytest
from dagster import AssetKey, RunConfig, instance_for_test, materialize
from mlflow.tracking import MlflowClient

from assets.assets import evaluation_asset, trained_model_asset, training_data_asset
from assets.checks import trainable_check
from assets.config import PinConfig
from assets.resources import IcebergResource, MlflowResource
from pipeline.ingest import append_arrow
from pipeline.project import parse_project
from tests.conftest import tabular_rows, write_appends

RESOURCES = {"iceberg": IcebergResource(), "mlflow": MlflowResource()}
ROWS = parse_project(
    {"pipelines": {"rows": {"data": {"table": "demo.rows"}, "model": {"factory": "linear"}, "tracking": {"registered_model": "rows-model"}}}}
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
        assert (first["decision"], first["challenger_version"], first["reason"]) == ("promoted to champion", "1", "no champion yet")

        append_arrow(catalog, "demo.rows", tabular_rows(300, 100), source="test")
        better = decide(instance, "optim.epochs=15", "optim.lr=0.05")
        assert better["decision"] == "promoted to champion", better["reason"]
        assert better["challenger_score"] < better["champion_score"] and better["champion_version"] == "1"

        worse = decide(instance, "optim.epochs=1", "optim.lr=0.0001")
        assert worse["decision"] == "champion kept" and worse["champion_version"] == "2"

    assert str(client.get_model_version_by_alias("rows-model", "champion").version) == "2"
    snapshot = str(worse_snapshot(catalog))
    first_version, second, third = (client.get_model_version("rows-model", v).tags for v in ("1", "2", "3"))
    assert third["icetrain.eval.role"] == "challenger" and third["icetrain.eval.decision"].startswith(f"not promoted on snapshot {snapshot}; version 2 stays champion")
    assert second["icetrain.eval.role"] == "champion" and second["icetrain.eval.decision"].startswith(f"champion; kept against version 3 on snapshot {snapshot}")
    assert third["icetrain.eval.snapshot_id"] == second["icetrain.eval.snapshot_id"] == snapshot
    assert float(third["icetrain.eval.val_loss"]) == pytest.approx(worse["challenger_score"], rel=1e-5)
    assert float(second["icetrain.eval.val_loss"]) == pytest.approx(worse["champion_score"], rel=1e-5)
    assert first_version["icetrain.eval.role"] == "former champion" and first_version["icetrain.eval.decision"].startswith("replaced by version 2 on snapshot")
    assert "promoted" not in first_version["icetrain.eval.decision"]


def worse_snapshot(catalog) -> int:
    return catalog.load_table("demo.rows").current_snapshot().snapshot_id
