"""One prepared run: pinned once, the table loaded once, judged once, and the same value everywhere it travels."""

import pickle
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog

import training.prepare
from pipeline.errors import EmptyDataError
from tests.conftest import all_runs, config_for
from training.launch import train_prepared
from training.prepare import PreparedRun, RunOrigin, prepare_run

PROJECT = Path(__file__).resolve().parents[1] / "icetrain.yaml"


@pytest.fixture
def traced(monkeypatch):
    """Counts of catalog loads per table, and of each gate's pass over the data, in this process."""
    counts = {"load_table": [], "data_gate": 0, "quality_gates": 0}
    load_table = SqlCatalog.load_table

    def counting_load(self, identifier):
        counts["load_table"].append(identifier if isinstance(identifier, str) else ".".join(identifier))
        return load_table(self, identifier)

    def counted(name, key):
        original = getattr(training.prepare, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(training.prepare, name, wrapper)

    monkeypatch.setattr(SqlCatalog, "load_table", counting_load)
    counted("inspect_data", "data_gate")
    counted("assess_snapshot", "quality_gates")
    return counts


def test_training_the_digits_pipeline_loads_its_table_once_and_runs_the_data_gate_once(
    settings, digits, traced, monkeypatch
) -> None:
    from icetrain.cli import main

    monkeypatch.setenv("ICETRAIN_CONFIG", str(PROJECT))
    assert main(["train", "--pipeline", "digits", "--set", "optim.epochs=1", "--no-progress"]) == 0
    assert traced["load_table"] == ["demo.digits"]
    assert traced["data_gate"] == 1 and traced["quality_gates"] == 0
    (run,) = all_runs(settings)
    assert "icetrain.gates" not in run.data.tags, "a pipeline without gates trains as it always did"


def test_a_pipeline_that_declares_gates_is_judged_once_against_its_reference(
    settings, digits, traced, monkeypatch, tmp_path
) -> None:
    from icetrain.cli import main

    project = tmp_path / "icetrain.yaml"
    project.write_text(
        "pipelines:\n  digits:\n    data: {table: demo.digits, label: label}\n    model: {factory: cnn}\n"
        "    optim: {epochs: 1}\n    gates: {max_psi: 0.25}\n"
    )
    monkeypatch.setenv("ICETRAIN_CONFIG", str(project))
    for _ in range(2):  # the second run is judged against the first one's snapshot
        assert main(["train", "--pipeline", "digits", "--no-progress"]) == 0
    assert traced["load_table"] == ["demo.digits", "demo.digits"], "one load per run"
    assert traced["data_gate"] == 2 and traced["quality_gates"] == 2
    first, second = sorted(all_runs(settings), key=lambda run: run.info.start_time)
    assert first.data.tags["icetrain.gates"] == "passed (no reference yet)"
    assert second.data.tags["icetrain.gates"] == f"passed against snapshot {first.data.tags['icetrain.snapshot_id']}"


def test_a_prepared_run_travels_as_json_and_pickles_through_it(settings, digits) -> None:
    config = config_for("demo.digits", "data.ref=main")
    prepared = prepare_run(settings, config, RunOrigin("digits", "cli", tags={"team": "vision"}))
    assert prepared.table is not None and prepared.read is not None, "the loaded table rides along in this process"
    assert prepared.pinned.snapshot_id == digits[-1] and prepared.pinned.asked_by == "branch"
    assert f'"snapshot_id": "{digits[-1]}"' in prepared.to_json(), "ids beyond 2^53 travel as text"

    for travelled in (PreparedRun.from_json(prepared.to_json()), pickle.loads(pickle.dumps(prepared))):
        assert travelled == prepared
        assert travelled.table is None and travelled.read is None, "another process loads the table itself"
        assert travelled.pinned.snapshot_id == digits[-1]
        assert travelled.report == prepared.report and travelled.report.passed
        assert travelled.origin.tags == {"team": "vision"}


def test_a_run_the_data_gate_refuses_is_never_trained_wherever_it_is_handed(settings, digits) -> None:
    prepared = prepare_run(settings, config_for("demo.digits", "data.min_rows=100000"), RunOrigin("digits"))
    assert not prepared.report.passed, "preparing judges; it does not raise"
    travelled = PreparedRun.from_json(prepared.to_json())
    with pytest.raises(EmptyDataError, match="fewer than data.min_rows=100000"):
        train_prepared(settings, travelled)
    assert all_runs(settings) == []
