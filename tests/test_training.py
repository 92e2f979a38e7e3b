"""A training run records in MLflow exactly which snapshot it saw; bad input leaves no run behind."""

import json

import mlflow
import mlflow.pytorch
import pyarrow as pa
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyiceberg.expressions import AlwaysTrue

from pipeline.data.tensors import label_classes_property
from pipeline.errors import (
    ConfigError,
    DivergedError,
    EmptyDataError,
    FilterError,
    IcetrainError,
    LabelError,
    ModelError,
    SnapshotNotFoundError,
    TableNotFoundError,
    TransformError,
)
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from pipeline.lake.refs import create_tag
from pipeline.tracking.lineage import IcebergDatasetSource
from tests.conftest import all_runs, config_for, tabular_rows, write_appends
from training.prepare import PreparedRun
from training.train import train


def train_quickly(settings, table: str, *assignments: str):
    return train(settings, config_for(table, *assignments), progress_bar=False)


def test_a_run_is_tagged_with_the_resolved_snapshot_and_logs_its_dataset(settings, catalog, digits) -> None:
    table = load_table(catalog, "demo.digits")
    create_tag(table, "first", digits[0])

    result = train_quickly(settings, "demo.digits", "data.ref=first", "data.filter=label < 9")

    run = MlflowClient(settings.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["icetrain.snapshot_id"] == str(digits[0])
    assert (tags["icetrain.snapshot_asked_by"], tags["icetrain.snapshot_asked_value"]) == ("tag", "first")
    assert (tags["icetrain.table"], tags["icetrain.catalog"]) == ("demo.digits", "icetrain")
    assert tags["icetrain.row_filter"] == "label < 9"
    assert tags["icetrain.columns"] == "label,pixels"
    expected_rows = sum(1 for label in table.scan(snapshot_id=digits[0]).to_arrow()["label"].to_pylist() if label < 9)
    assert tags["icetrain.row_count"] == str(expected_rows) == str(result.row_count)
    assert tags["icetrain.dataset_digest"] == result.digest

    training, validation = run.inputs.dataset_inputs
    assert training.dataset.digest == result.digest
    assert training.dataset.source_type == validation.dataset.source_type == "iceberg"
    source = IcebergDatasetSource.from_json(training.dataset.source)
    assert (source.table, source.snapshot_id, source.row_filter, source.split) == (
        "demo.digits",
        digits[0],
        "label < 9",
        "train",
    )
    assert [tag.value for tag in training.tags if tag.key == "mlflow.data.context"] == ["training"]
    assert [tag.value for tag in validation.tags if tag.key == "mlflow.data.context"] == ["validation"]

    history = MlflowClient(settings.tracking_uri).get_metric_history(result.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert str(json.loads(run.data.params["data.snapshot_id"])) == str(digits[0])
    assert (run.data.params["seed"], run.data.params["data.ref"], run.data.params["data.classes"]) == (
        "0",
        "",
        json.dumps([str(c) for c in range(10)]),
    )
    assert run.data.params["icetrain.config_version"] == "2"


def test_the_logged_model_loads_and_predicts_digits(settings, digits) -> None:
    result = train_quickly(settings, "demo.digits", "optim.epochs=8")
    assert result.final_metrics["val_accuracy"] > 0.85

    mlflow.set_tracking_uri(settings.tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    checkpoint_path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="checkpoints/last.pt")
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    prepared = PreparedRun.from_json(checkpoint["prepared"])  # what a resumed run continues from
    assert prepared.pinned == result.pinned
    assert prepared.config.optim.epochs == 8
    assert prepared.config.data.image_shape == (1, 8, 8)
    assert checkpoint["progress"]["epoch"] == 8


def test_artifacts_stay_under_icetrain_home(settings, digits, tmp_path) -> None:
    train_quickly(settings, "demo.digits")
    assert list((settings.home / "mlartifacts").rglob("MLmodel"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_same_seed_trains_the_same_model(settings, catalog) -> None:
    write_appends(catalog, "demo.rows", [120])
    runs = [train_quickly(settings, "demo.rows") for _ in range(2)]
    other_seed = train_quickly(settings, "demo.rows", "seed=1")
    assert runs[0].history == runs[1].history
    assert runs[0].history != other_seed.history


def test_training_on_an_old_snapshot_ignores_later_appends(settings, catalog) -> None:
    ids = write_appends(catalog, "demo.rows", [60, 90])
    result = train_quickly(settings, "demo.rows", f"data.snapshot_id={ids[0]}")
    assert result.row_count == 60
    assert MlflowClient(settings.tracking_uri).get_run(result.run_id).data.tags["icetrain.snapshot_id"] == str(ids[0])


def empty_current_snapshot(catalog) -> None:
    write_appends(catalog, "demo.rows", [30])
    load_table(catalog, "demo.rows").delete(AlwaysTrue())


def null_labels(catalog) -> None:
    rows = tabular_rows(0, 6)
    append_arrow(
        catalog, "demo.rows", rows.set_column(3, "label", pa.array([0, 1, None, 2, 0, 1], pa.int64())), source="test"
    )


def plain_table(catalog) -> None:
    write_appends(catalog, "demo.rows", [30])


def bad_labels(catalog) -> None:
    rows = tabular_rows(0, 30)
    append_arrow(catalog, "demo.rows", rows, source="test", table_properties=label_classes_property(range(2)))


BAD_REQUESTS = [
    pytest.param(plain_table, ["data.table=demo.missing"], TableNotFoundError, id="unknown-table"),
    pytest.param(plain_table, ["data.snapshot_id=42"], SnapshotNotFoundError, id="unknown-id"),
    pytest.param(plain_table, ["data.ref=v9"], SnapshotNotFoundError, id="unknown-ref"),
    pytest.param(plain_table, ["data.as_of=2001-01-01T00:00:00Z"], SnapshotNotFoundError, id="as-of-too-early"),
    pytest.param(plain_table, ["data.filter=id >>"], FilterError, id="filter-syntax"),
    pytest.param(plain_table, ["data.filter=ghost = 1"], FilterError, id="filter-column"),
    pytest.param(plain_table, ["data.label=target"], LabelError, id="label-missing"),
    pytest.param(null_labels, [], LabelError, id="label-nulls"),
    pytest.param(bad_labels, [], LabelError, id="label-outside-declared-classes"),
    pytest.param(plain_table, ["data.min_rows=31"], EmptyDataError, id="too-few-rows"),
    pytest.param(plain_table, ["data.label=x2", "data.features=[x1]"], LabelError, id="float-label-for-classification"),
    pytest.param(empty_current_snapshot, [], EmptyDataError, id="empty-snapshot"),
    pytest.param(plain_table, ["data.sql=select nonsense"], TransformError, id="sql-fails"),
    pytest.param(plain_table, ["model.factory=no_such_module:make"], ModelError, id="model-not-importable"),
    pytest.param(plain_table, ["model.factory=mlp", "model.kwargs={depth: 3}"], ModelError, id="model-kwargs-rejected"),
    pytest.param(plain_table, ["compute.device=cuda:7"], ConfigError, id="no-such-device"),
    pytest.param(plain_table, ["optim.early_stopping.metric=val_f1"], ConfigError, id="unknown-early-stopping-metric"),
]


@pytest.mark.parametrize(("make_table", "assignments", "error"), BAD_REQUESTS)
def test_bad_input_raises_one_line_and_writes_nothing(settings, catalog, make_table, assignments, error) -> None:
    make_table(catalog)
    metadata_before = load_table(catalog, "demo.rows").metadata_location

    with pytest.raises(error) as raised:
        train_quickly(settings, "demo.rows", *assignments)

    assert isinstance(raised.value, IcetrainError)
    assert "\n" not in str(raised.value)
    assert all_runs(settings) == []
    assert load_table(catalog, "demo.rows").metadata_location == metadata_before


def test_a_run_can_be_replayed_on_exactly_the_same_data(settings, catalog) -> None:
    from pipeline.tracking.lineage import replay_config

    ids = write_appends(catalog, "demo.rows", [80, 40])
    first = train_quickly(settings, "demo.rows", f"data.snapshot_id={ids[0]}", "data.features=[x1]", "data.filter=id >= 10",
                "data.sql=select x1, label from snapshot where id % 5 <> 0", "seed=3")  # fmt: skip
    write_appends(catalog, "demo.more", [5])

    config = replay_config(settings, first.run_id)
    again = train(settings, config, progress_bar=False)

    assert (config.data.snapshot_id, config.data.filter, config.seed, config.optim.epochs) == (ids[0], "id >= 10", 3, 2)
    assert config.data.classes == ("0", "1", "2")
    assert again.digest == first.digest and again.row_count == first.row_count
    assert again.history == first.history


def test_replaying_an_unknown_run_is_a_clear_error(settings) -> None:
    from pipeline.errors import RunNotFoundError
    from pipeline.tracking.lineage import replay_config

    with pytest.raises(RunNotFoundError, match="no MLflow run 'nope'"):
        replay_config(settings, "nope")


def test_a_run_can_register_its_model(settings, catalog) -> None:
    write_appends(catalog, "demo.rows", [60])
    result = train_quickly(
        settings, "demo.rows", "tracking.registered_model=rows-classifier", "tracking.experiment=registry"
    )

    (version,) = MlflowClient(settings.tracking_uri).search_model_versions("name = 'rows-classifier'")
    assert (str(version.version), version.run_id, result.model_version) == ("1", result.run_id, "1")
    assert (
        MlflowClient(settings.tracking_uri).get_run(result.run_id).info.experiment_id
        == MlflowClient(settings.tracking_uri).get_experiment_by_name("registry").experiment_id
    )


def nan_rows(count: int = 60, *, bad: tuple[int, ...] = (5, 17)) -> pa.Table:
    """Tabular rows whose feature x2 is NaN in a few rows (a table written by another tool)."""
    rows = tabular_rows(0, count)
    x2 = rows.column("x2").to_pylist()
    for index in bad:
        x2[index] = float("nan")
    return rows.set_column(2, "x2", pa.array(x2, pa.float64()))


def test_a_loss_that_is_not_finite_ends_the_run_failed_naming_the_step_and_the_features(settings, catalog) -> None:
    append_arrow(catalog, "demo.rows", nan_rows(), source="test", identifier_fields=("id",))
    with pytest.raises(DivergedError) as raised:
        train_quickly(settings, "demo.rows", "data.val_fraction=0", "loader.batch_size=8", "loader.shuffle=false")
    message = str(raised.value)
    assert (
        "train_loss is nan at step 1 (epoch 1)" in message and "features holding NaN or infinite values: x2" in message
    ), message
    assert "x1" not in message and "\n" not in message
    (run,) = all_runs(settings)
    assert run.info.status == "FAILED"


def test_the_cli_says_the_nan_loss_in_one_line_and_exits_1(settings, catalog, capsys) -> None:
    from icetrain.cli import main

    append_arrow(catalog, "demo.rows", nan_rows(), source="test", identifier_fields=("id",))
    assert main(["train", "--table", "demo.rows", "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is nan" in err[0] and "x2" in err[0], err
    assert [run.info.status for run in all_runs(settings)] == ["FAILED"]


def test_registering_a_run_twice_answers_with_the_version_it_already_is(settings, catalog) -> None:
    from pipeline.tracking.registry import register

    write_appends(catalog, "demo.rows", [60])
    result = train_quickly(settings, "demo.rows")
    first, again = register(settings, result.run_id, "rows-model"), register(settings, result.run_id, "rows-model")
    assert (first.version, first.already) == ("1", False)
    assert (again.version, again.already, again.iceberg_tag) == ("1", True, first.iceberg_tag)
    assert len(MlflowClient(settings.tracking_uri).search_model_versions("name = 'rows-model'")) == 1
    assert [ref for ref in load_table(catalog, "demo.rows").metadata.refs if ref.startswith("icetrain/")] == [
        "icetrain/rows-model/v1"
    ]
