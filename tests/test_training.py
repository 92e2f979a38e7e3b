"""A training run records in MLflow exactly which snapshot it saw; bad input leaves no run behind."""

import mlflow
import mlflow.pytorch
import pyarrow as pa
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyiceberg.expressions import AlwaysTrue

from pipeline.catalog import load_table
from pipeline.config import ReadSpec, SnapshotRequest, TrainConfig
from pipeline.errors import (
    EmptyDataError,
    FilterError,
    IcetrainError,
    LabelError,
    SnapshotNotFoundError,
    TableNotFoundError,
    TransformError,
)
from pipeline.ingest import append_arrow
from pipeline.lineage import IcebergDatasetSource
from pipeline.refs import create_tag
from training.run import train_on_snapshot
from tests.conftest import all_runs, tabular_rows, write_appends

QUICK = TrainConfig(epochs=2, progress=False)


def test_a_run_is_tagged_with_the_resolved_snapshot_and_logs_its_dataset(settings, catalog, digits) -> None:
    table = load_table(catalog, "demo.digits")
    create_tag(table, "first", digits[0])

    result = train_on_snapshot(settings, SnapshotRequest("demo.digits", ref="first"), ReadSpec(row_filter="label < 9"), QUICK)

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

    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == result.digest
    assert dataset_input.dataset.source_type == "iceberg"
    source = IcebergDatasetSource.from_json(dataset_input.dataset.source)
    assert (source.table, source.snapshot_id, source.row_filter) == ("demo.digits", digits[0], "label < 9")
    assert [tag.value for tag in dataset_input.tags if tag.key == "mlflow.data.context"] == ["training"]

    history = MlflowClient(settings.tracking_uri).get_metric_history(result.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert run.data.params["data.snapshot_id"] == str(digits[0])
    assert run.data.params["train.seed"] == "0"


def test_the_logged_model_loads_and_predicts_digits(settings, digits) -> None:
    result = train_on_snapshot(settings, SnapshotRequest("demo.digits"), ReadSpec(), TrainConfig(epochs=8, progress=False))
    assert result.final_metrics["val_accuracy"] > 0.85

    mlflow.set_tracking_uri(settings.tracking_uri)
    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    checkpoint_path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="checkpoint/checkpoint.pt")
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert checkpoint["pinned"]["snapshot_id"] == str(result.pinned.snapshot_id)
    assert checkpoint["train_config"]["epochs"] == 8


def test_artifacts_stay_under_icetrain_home(settings, digits, tmp_path) -> None:
    train_on_snapshot(settings, SnapshotRequest("demo.digits"), ReadSpec(), QUICK)
    assert list((settings.home / "mlartifacts").rglob("MLmodel"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_same_seed_trains_the_same_model(settings, catalog) -> None:
    write_appends(catalog, "demo.rows", [120])
    runs = [train_on_snapshot(settings, SnapshotRequest("demo.rows"), ReadSpec(), QUICK) for _ in range(2)]
    other_seed = train_on_snapshot(settings, SnapshotRequest("demo.rows"), ReadSpec(), TrainConfig(epochs=2, seed=1, progress=False))
    assert runs[0].history == runs[1].history
    assert runs[0].history != other_seed.history


def test_training_on_an_old_snapshot_ignores_later_appends(settings, catalog) -> None:
    ids = write_appends(catalog, "demo.rows", [60, 90])
    result = train_on_snapshot(settings, SnapshotRequest("demo.rows", snapshot_id=ids[0]), ReadSpec(), QUICK)
    assert result.row_count == 60
    assert MlflowClient(settings.tracking_uri).get_run(result.run_id).data.tags["icetrain.snapshot_id"] == str(ids[0])


def empty_current_snapshot(catalog) -> None:
    write_appends(catalog, "demo.rows", [30])
    load_table(catalog, "demo.rows").delete(AlwaysTrue())


def null_labels(catalog) -> None:
    rows = tabular_rows(0, 6)
    append_arrow(catalog, "demo.rows", rows.set_column(3, "label", pa.array([0, 1, None, 2, 0, 1], pa.int64())), source="test")


def plain_table(catalog) -> None:
    write_appends(catalog, "demo.rows", [30])


BAD_REQUESTS = [
    pytest.param(plain_table, SnapshotRequest("demo.missing"), ReadSpec(), TableNotFoundError, id="unknown-table"),
    pytest.param(plain_table, SnapshotRequest("demo.rows", snapshot_id=42), ReadSpec(), SnapshotNotFoundError, id="unknown-id"),
    pytest.param(plain_table, SnapshotRequest("demo.rows", ref="v9"), ReadSpec(), SnapshotNotFoundError, id="unknown-ref"),
    pytest.param(
        plain_table,
        SnapshotRequest("demo.rows", as_of=__import__("datetime").datetime(2001, 1, 1, tzinfo=__import__("datetime").timezone.utc)),
        ReadSpec(),
        SnapshotNotFoundError,
        id="as-of-too-early",
    ),
    pytest.param(plain_table, SnapshotRequest("demo.rows"), ReadSpec(row_filter="id >>"), FilterError, id="filter-syntax"),
    pytest.param(plain_table, SnapshotRequest("demo.rows"), ReadSpec(row_filter="ghost = 1"), FilterError, id="filter-column"),
    pytest.param(plain_table, SnapshotRequest("demo.rows"), ReadSpec(label="target"), LabelError, id="label-missing"),
    pytest.param(null_labels, SnapshotRequest("demo.rows"), ReadSpec(), LabelError, id="label-nulls"),
    pytest.param(empty_current_snapshot, SnapshotRequest("demo.rows"), ReadSpec(), EmptyDataError, id="empty-snapshot"),
    pytest.param(plain_table, SnapshotRequest("demo.rows"), ReadSpec(sql="select nonsense"), TransformError, id="sql-fails"),
]


@pytest.mark.parametrize(("make_table", "request_", "spec", "error"), BAD_REQUESTS)
def test_bad_input_raises_one_line_and_writes_nothing(settings, catalog, make_table, request_, spec, error) -> None:
    make_table(catalog)
    metadata_before = load_table(catalog, "demo.rows").metadata_location

    with pytest.raises(error) as raised:
        train_on_snapshot(settings, request_, spec, QUICK)

    assert isinstance(raised.value, IcetrainError)
    assert "\n" not in str(raised.value)
    assert all_runs(settings) == []
    assert load_table(catalog, "demo.rows").metadata_location == metadata_before


def test_a_run_can_be_replayed_on_exactly_the_same_data(settings, catalog) -> None:
    from pipeline.lineage import replay_request

    ids = write_appends(catalog, "demo.rows", [80, 40])
    spec = ReadSpec(features=("x1",), row_filter="id >= 10", sql="select x1, label from snapshot where id % 5 <> 0")
    first = train_on_snapshot(settings, SnapshotRequest("demo.rows", snapshot_id=ids[0]), spec, TrainConfig(epochs=2, seed=3, progress=False))
    write_appends(catalog, "demo.more", [5])

    request, replayed_spec, config = replay_request(settings, first.run_id)
    again = train_on_snapshot(settings, request, replayed_spec, config)

    assert (request.snapshot_id, replayed_spec, config.seed, config.epochs) == (ids[0], spec, 3, 2)
    assert again.digest == first.digest and again.row_count == first.row_count
    assert again.history == first.history


def test_replaying_an_unknown_run_is_a_clear_error(settings) -> None:
    from pipeline.errors import RunNotFoundError
    from pipeline.lineage import replay_request

    with pytest.raises(RunNotFoundError, match="no MLflow run 'nope'"):
        replay_request(settings, "nope")
