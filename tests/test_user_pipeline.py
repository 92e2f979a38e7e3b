"""A user's own table and model, declared in icetrain.yaml: CLI training, Dagster definitions, a pinned materialization."""

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dagster import instance_for_test, materialize

from assets.assets import trained_model_asset, training_data_asset
from assets.checks import trainable_check
from assets.pipelines import project_definitions
from pipeline.config.project import load_project
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import all_runs
from tests.test_cli import icetrain

MODEL_MODULE = '''
import torch
from torch import nn


def tiny_net(feature_shape, num_classes, hidden=4, sample=None):
    """A user's model factory: standardises with the training sample, one hidden layer."""
    mean = sample.mean(0) if sample is not None else torch.zeros(feature_shape)
    std = sample.std(0).clamp_min(1e-6) if sample is not None else torch.ones(feature_shape)
    net = nn.Sequential(nn.Linear(feature_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    net.register_buffer("mean", mean)
    net.register_buffer("std", std)
    return net


def not_a_model(feature_shape, num_classes):
    return "a string"
'''

PIPELINES_FILE = """
pipelines:
  churn:
    description: Which customers leave - a rare positive label.
    data:
      table: shop.customers
      label: churned
      features: [tenure, spend, visits]
      val_fraction: 0.25
    model:
      factory: shop_models:tiny_net
      kwargs: {hidden: 16}
    optim:
      epochs: 3
      lr: 0.01
      class_weights: balanced
    loader:
      batch_size: 32
"""


def customers(start: int, count: int) -> pa.Table:
    """Synthetic customers: churn is rare and more likely with low tenure and few visits."""
    rng = np.random.default_rng(start)
    tenure, spend, visits = (
        rng.gamma(2.0, 12.0, count),
        rng.normal(50, 15, count),
        rng.poisson(4, count).astype(np.float64),
    )
    churned = ((tenure < 8) & (visits < 3)).astype(np.int64)
    schema = pa.schema(
        [
            pa.field("customer_id", pa.int64(), nullable=False),
            ("tenure", pa.float64()),
            ("spend", pa.float64()),
            ("visits", pa.float64()),
            ("churned", pa.int64()),
        ]
    )
    return pa.table([np.arange(start, start + count), tenure, spend, visits, churned], schema=schema)


@pytest.fixture
def project(settings, catalog, tmp_path: Path) -> Path:
    (tmp_path / "shop_models.py").write_text(textwrap.dedent(MODEL_MODULE))
    (tmp_path / "icetrain.yaml").write_text(PIPELINES_FILE)
    append_arrow(catalog, "shop.customers", customers(0, 600), source="test", identifier_fields=("customer_id",))
    return tmp_path / "icetrain.yaml"


def test_the_cli_trains_a_declared_pipeline_with_the_users_model(settings, catalog, project) -> None:
    out = icetrain("train", "--pipeline", "churn", "--set", "optim.epochs=2", "--no-progress")

    assert out.returncode == 0, out.stderr
    (run,) = all_runs(settings)
    params, tags = run.data.params, run.data.tags
    assert (params["model.factory"], params["model.kwargs"], params["optim.epochs"]) == (
        "shop_models:tiny_net",
        '{"hidden": 16}',
        "2",
    )
    assert (params["data.classes"], params["resolved.model_class"]) == ('["0", "1"]', "Sequential")
    assert tags["icetrain.pipeline"] == "churn" and tags["icetrain.table"] == "shop.customers"
    assert {"val_precision", "val_recall", "val_accuracy"} <= set(run.data.metrics)


def test_a_factory_that_returns_no_module_is_one_line_before_any_run(settings, project) -> None:
    out = icetrain(
        "train", "--pipeline", "churn", "--set", "model.factory=shop_models:not_a_model", "--set", "model.kwargs={}"
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == "icetrain: error: model.factory 'shop_models:not_a_model' returned str, not a torch.nn.Module"
    )
    assert all_runs(settings) == []


def test_dagster_definitions_hold_the_pipeline_and_nothing_of_the_demo(project) -> None:
    defs = project_definitions(load_project(project))

    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == {
        "shop/customers",
        "churn/training_data",
        "churn/trained_model",
    }
    assert {check.name for check in defs.resolve_asset_graph().asset_check_keys} == {
        "is_trainable",
        "schema_contract",
        "features_complete",
        "no_drift",
    }
    assert {job.name for job in defs.resolve_all_job_defs()} - {"__ASSET_JOB"} == {"churn_train"}
    assert defs.resolve_schedule_def("churn_schedule").job_name == "churn_train"
    assert defs.resolve_sensor_def("churn_new_snapshot").job_name == "churn_train"
    assert "digits" not in repr(sorted(defs.resolve_all_asset_keys())) + repr(
        [j.name for j in defs.resolve_all_job_defs()]
    )


def test_a_materialization_trains_on_the_snapshot_it_pinned(settings, catalog, project) -> None:
    churn = load_project(project).pipeline("churn")
    data_asset, model_asset, check = training_data_asset(churn), trained_model_asset(churn), trainable_check(churn)
    resources = project_definitions(load_project(project)).resources
    pinned_id = load_table(catalog, "shop.customers").current_snapshot().snapshot_id

    with instance_for_test() as instance:
        pinned = materialize([data_asset, check], instance=instance, resources=resources)
        append_arrow(catalog, "shop.customers", customers(600, 400), source="test")
        trained = materialize(
            [data_asset, model_asset], instance=instance, resources=resources, selection=[model_asset.key]
        )

    assert pinned.success and trained.success
    assert [e.passed for e in pinned.get_asset_check_evaluations()] == [True]
    (event,) = trained.get_asset_materialization_events()
    metadata = {key: value.value for key, value in event.materialization.metadata.items()}
    assert metadata["snapshot_id"] == str(pinned_id)
    assert metadata["row_count"] == 600
    (run,) = all_runs(settings)
    assert run.data.tags["icetrain.snapshot_id"] == str(pinned_id)
    assert run.data.tags["icetrain.dagster_run_id"] == trained.run_id
