"""Numbers with gaps: filled from the training rows' statistics, recorded with the run, and replayed."""

import numpy as np
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from icetrain.cli import main
from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.errors import NullFeatureError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import all_runs, config_for
from training.reproduce import reproduce
from training.train import train


def applicants(start: int, count: int, shift: float = 0.0) -> pa.Table:
    """An id, an income with gaps (every fifth row), an age, a text segment and a label the income predicts."""
    rng = np.random.default_rng(start)
    income = rng.normal(50 + shift, 10, count)
    label = (income + rng.normal(0, 3, count) > 50 + shift).astype(np.int64)
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + count), type=pa.int64()),
            "income": pa.array([None if i % 5 == 0 else float(v) for i, v in enumerate(income)]),
            "age": pa.array(rng.integers(18, 80, count)),
            "segment": pa.array(rng.choice(["retail", "premium"], count)),
            "label": pa.array(label),
        }
    )


@pytest.fixture
def gaps(catalog) -> int:
    return append_arrow(catalog, "bank.applicants", applicants(0, 2000), source="test", identifier_fields=("id",))


def test_without_imputation_a_numeric_gap_still_stops_training_in_one_line(settings, gaps, capsys) -> None:
    assert main(["train", "--table", "bank.applicants", "--epochs", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feature column 'income' has 400 null values" in err[0], err


def test_imputed_gaps_train_with_the_training_rows_median_and_an_indicator(settings, catalog, gaps) -> None:
    config = config_for("bank.applicants", "data.impute=median", "data.impute_indicator=true", "optim.epochs=3")
    result = train(settings, config)
    params = MlflowClient(settings.tracking_uri).get_run(result.run_id).data.params
    (income, age) = params["resolved.encoding.fills"].split(",")
    assert income.startswith("income=median:") and age.startswith("age=median:")
    known = [v for v in applicants(0, 2000).column("income").to_pylist() if v is not None]
    assert abs(float(income.split(":")[1]) - np.median(known)) < 1.0, "the training rows' median (80% of the rows)"
    assert result.final_metrics["val_accuracy"] > 0.75

    table = load_table(catalog, "bank.applicants")
    pinned = resolve_snapshot(table, SnapshotRequest("bank.applicants"), settings.catalog_name)
    spec = ReadSpec(features=("income", "age"), impute=(("income", "zero"),), impute_indicator=True)
    numeric, _ = next(iter(open_loader(table, pinned, spec, LoaderConfig(batch_size=10, shuffle=False))))
    assert numeric.shape == (10, 3), "income, age, income_missing"
    assert numeric[0].tolist()[0] == 0.0 and numeric[0].tolist()[2] == 1.0, "row 0's income was a gap"
    assert numeric[1].tolist()[2] == 0.0

    outcome = reproduce(settings, result.run_id, progress_bar=False)
    assert outcome.reproduced, outcome.differences


def test_a_replay_fills_with_the_recorded_value_not_the_new_snapshots(settings, catalog, gaps) -> None:
    first = train(settings, config_for("bank.applicants", "data.impute=mean", "optim.epochs=1"))
    append_arrow(catalog, "bank.applicants", applicants(2000, 4000, shift=30.0), source="test")
    fresh = train(settings, config_for("bank.applicants", "data.impute=mean", "optim.epochs=1"))
    assert main(["train", "--from-run", first.run_id, "--no-progress"]) == 0
    params = {run.info.run_id: run.data.params for run in all_runs(settings)}
    replay = next(r for r in all_runs(settings) if r.data.tags.get("icetrain.replays") == first.run_id)
    assert params[fresh.run_id]["resolved.encoding.fills"] != params[first.run_id]["resolved.encoding.fills"]
    assert replay.data.params["resolved.encoding.fills"] == params[first.run_id]["resolved.encoding.fills"]


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (("data.impute={segment: median}",), "data.impute names 'segment', a categorical or time feature"),
        (("data.features=age", "data.impute={income: zero}"), "data.impute names 'income', which is not among the features age"),
        (("data.impute=mode",), "data.impute"),
    ],
)  # fmt: skip
def test_imputing_what_is_not_a_numeric_feature_is_one_line(settings, gaps, capsys, assignments, message) -> None:
    args = ["train", "--table", "bank.applicants", "--epochs", "1", "--no-progress"]
    for assignment in assignments:
        args += ["--set", assignment]
    assert main(args) in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert all_runs(settings) == []


def test_a_loader_without_an_encoding_refuses_a_gap_it_was_not_asked_to_fill(settings, catalog, gaps) -> None:
    table = load_table(catalog, "bank.applicants")
    pinned = resolve_snapshot(table, SnapshotRequest("bank.applicants"), settings.catalog_name)
    loader = open_loader(table, pinned, ReadSpec(features=("income", "age")), LoaderConfig(batch_size=100))
    with pytest.raises(NullFeatureError, match="'income' has 400 null values"):
        next(iter(loader))
