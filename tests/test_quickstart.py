"""The README's quick start: a table with text, a boolean, a timestamp and gaps, trained as it comes, with no SQL."""

from pathlib import Path

import pyarrow as pa
import pytest

from icetrain.cli import main
from pipeline.demo.applications import write_applications
from pipeline.lake.ingest import append_arrow
from tests.conftest import all_runs
from training.reproduce import reproduce

PROJECT = Path(__file__).resolve().parents[1] / "icetrain.yaml"


def test_the_quick_start_trains_from_the_readme_and_reproduces_bit_for_bit(settings, monkeypatch, capsys) -> None:
    monkeypatch.setenv("ICETRAIN_CONFIG", str(PROJECT))
    parquet = write_applications(settings.home.parent / "applications.parquet", rows=4000)
    assert main(["ingest", "bank.applications", str(parquet), "--identifier", "application_id"]) == 0
    assert main(["train", "--pipeline", "loans", "--no-progress"]) == 0
    (run,) = all_runs(settings)
    params = run.data.params
    assert params["data.features"] == '["amount", "income", "age", "purpose", "employment", "verified", "applied_at"]'
    assert params["resolved.encoding.columns"] == "purpose,employment,verified"
    assert params["resolved.encoding.fills"].startswith("income=median:")
    assert run.data.metrics["val_roc_auc"] > 0.7

    outcome = reproduce(settings, run.info.run_id, progress_bar=False)
    assert outcome.reproduced and outcome.max_weight_difference == 0, outcome.differences


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("data.time_parts={amount: [hour]}", "data.time_parts names 'amount', which has type double"),
        ("data.time_parts={applied_at: [fortnight]}", "'fortnight' is not a calendar part"),
        ("data.time_parts={opened_on: [hour]}", "column 'opened_on' is a date; it has no hour or minute"),
        ("data.impute={applied_at: mean}", "data.impute names 'applied_at', a categorical or time feature"),
    ],
)
def test_time_parts_asked_of_what_has_none_are_one_line(settings, catalog, capsys, assignment, message) -> None:
    from pipeline.demo.applications import applications

    rows = applications(500)
    rows = rows.append_column("opened_on", pa.array(rows.column("applied_at").cast(pa.date32())))
    append_arrow(catalog, "bank.applications", rows, source="test", identifier_fields=("application_id",))
    args = ["train", "--table", "bank.applications", "--label", "defaulted", "--epochs", "1", "--no-progress"]
    assert main([*args, "--set", "data.impute={income: zero}", "--set", assignment]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert all_runs(settings) == []


def test_a_timestamp_is_days_since_the_training_rows_earliest_plus_its_calendar_parts(settings, catalog) -> None:
    from pipeline.data.loading import open_loader
    from pipeline.data.snapshots import resolve_snapshot
    from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
    from pipeline.demo.applications import applications
    from pipeline.lake.catalog import load_table

    rows = applications(300)
    append_arrow(catalog, "bank.applications", rows, source="test", identifier_fields=("application_id",))
    table = load_table(catalog, "bank.applications")
    pinned = resolve_snapshot(table, SnapshotRequest("bank.applications"), settings.catalog_name)
    spec = ReadSpec(label="defaulted", features=("applied_at",), time_parts=(("applied_at", ("hour", "dow")),))
    loader = open_loader(table, pinned, spec, LoaderConfig(batch_size=300, shuffle=False))
    (numeric, _), (origin,) = next(iter(loader)), loader.layout.encoding.origins
    first = rows.column("applied_at")[0].as_py()
    expected_days = first.timestamp() / 86_400 - origin.day
    assert abs(numeric[0, 0].item() - expected_days) < 1e-3
    assert numeric[0, 1].item() == first.hour and numeric[0, 2].item() == first.weekday()
    assert loader.layout.numeric_columns == ("applied_at", "applied_at_hour", "applied_at_dow")
