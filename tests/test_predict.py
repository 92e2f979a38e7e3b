"""Batch predictions into Iceberg: pinned, exact, recorded, once per model and input."""

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from icetrain.cli import main
from pipeline.demo.applications import applications
from pipeline.lake.catalog import load_table
from pipeline.lake.doctor import inspect_files
from pipeline.lake.ingest import append_arrow
from pipeline.lake.predictions import INPUT_SNAPSHOT, MODEL_RUN, MODEL_VERSION
from tests.conftest import all_runs

PROJECT = Path(__file__).resolve().parents[1] / "icetrain.yaml"
TABLE = "bank.applications"


def predictions(catalog, name="bank.loans_predictions", snapshot_id=None) -> pa.Table:
    return load_table(catalog, name).scan(snapshot_id=snapshot_id).to_arrow().sort_by("application_id")


def test_the_champion_scores_a_pinned_snapshot_into_a_new_predictions_table(
    settings, catalog, loans_champion, capsys
) -> None:
    assert main(["predict", "--model", "models:/loans@champion", "--into", "bank.loans_predictions"]) == 0
    out = capsys.readouterr().out
    assert "wrote 3000 predictions of loans version 1" in out, out
    scored = predictions(catalog)
    assert scored.num_rows == 3000
    assert scored.column("application_id").to_pylist() == sorted(
        applications(3000).column("application_id").to_pylist()
    )
    assert set(scored.column("prediction").to_pylist()) <= {0, 1}
    probabilities = np.array(scored.column("probabilities").to_pylist())
    assert probabilities.shape == (3000, 2) and np.allclose(probabilities.sum(axis=1), 1.0)
    called = scored.column("prediction").to_numpy() == 1  # the positive class from the decision threshold up
    assert not called.any() or probabilities[called, 1].min() > probabilities[~called, 1].max()
    assert set(scored.column("model_version").to_pylist()) == {"1"}
    assert set(scored.column("model_run_id").to_pylist()) == {loans_champion}

    table = load_table(catalog, "bank.loans_predictions")
    (snapshot,) = table.snapshots()
    summary = snapshot.summary.additional_properties
    source = load_table(catalog, TABLE).current_snapshot().snapshot_id
    assert summary[MODEL_RUN] == loans_champion and summary[MODEL_VERSION] == "1"
    assert summary[INPUT_SNAPSHOT] == str(source)
    assert table.properties["icetrain.predictions.classes"] == '["0", "1"]'


def test_scoring_the_same_input_with_the_same_model_again_makes_no_second_snapshot(
    settings, catalog, loans_champion, capsys
) -> None:
    args = ["predict", "--model", "models:/loans/1", "--into", "bank.loans_predictions"]
    assert main(args) == 0
    assert main([*args, "--model", loans_champion]) == 0  # the same model, asked by run id, is another scorer
    assert main(args) == 0
    assert "already held 3000 predictions" in capsys.readouterr().out
    table = load_table(catalog, "bank.loans_predictions")
    assert len(table.snapshots()) == 2
    assert table.scan().to_arrow().num_rows == 6000


def test_incremental_scores_only_the_rows_appended_since_the_last_scored_snapshot(
    settings, catalog, loans_champion, capsys
) -> None:
    args = ["predict", "--pipeline", "loans", "--incremental"]
    assert main(args) == 0
    more = applications(4000).slice(3000)
    append_arrow(catalog, TABLE, more, source="test")
    assert main(args) == 0
    assert "1000 predictions" in capsys.readouterr().out
    scored = predictions(catalog)
    assert scored.num_rows == 4000
    assert pc.count_distinct(scored.column("application_id")).as_py() == 4000
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("icetrain: error:") and "no rows appended since snapshot" in err and "\n" not in err


def test_predictions_are_the_models_own_outputs_on_exactly_the_pinned_rows(settings, catalog, loans_champion) -> None:
    from pipeline.data.snapshots import list_snapshots
    from pipeline.tracking.client import tracking_client
    from training.predict import load_run_model

    first = list_snapshots(load_table(catalog, TABLE))[-1].snapshot_id
    append_arrow(catalog, TABLE, applications(3500).slice(3000), source="test")
    assert main(["predict", "--pipeline", "loans", "--snapshot-id", str(first)]) == 0
    scored = predictions(catalog)
    assert scored.num_rows == 3000  # the pinned snapshot's rows, not the 500 committed since

    from pipeline.data.loading import open_loader
    from pipeline.data.snapshots import resolve_snapshot
    from pipeline.data.specs import LoaderConfig, SnapshotRequest
    from pipeline.tracking.lineage import replay_config, replay_encoding

    config = replay_config(settings, loans_champion)
    table = load_table(catalog, TABLE)
    pinned = resolve_snapshot(table, SnapshotRequest(TABLE, first), settings.catalog_name)
    from dataclasses import replace

    from pipeline.data.reading import prepare_read

    read = prepare_read(table, pinned, config.data.read_spec())
    read = replace(read, layout=read.layout.with_encoding(replay_encoding(settings, loans_champion)))
    loader = open_loader(
        table, pinned, config.data.read_spec(), LoaderConfig(batch_size=4096, shuffle=False), prepared=read
    )
    model = load_run_model(tracking_client(settings), loans_champion).eval()
    import torch

    with torch.inference_mode():
        expected = np.concatenate([torch.softmax(model(*batch[:-1]), 1).numpy() for batch in loader])
    mine = np.array(load_table(catalog, "bank.loans_predictions").scan().to_arrow().column("probabilities").to_pylist())
    assert np.allclose(np.sort(mine[:, 1]), np.sort(expected[:, 1]), atol=1e-6)


MISTAKES = [
    (["--model", "models:/nobody@champion"], "no registered model 'nobody'"),
    (["--model", "models:/loans@gold"], "registered model 'loans' has no alias 'gold'"),
    (["--model", "models:/loans/7"], "registered model 'loans' has no version '7'"),
    (["--model", "0123456789abcdef0123456789abcdef"], "no MLflow run '0123456789abcdef0123456789abcdef'"),
    (["--model", "champion"], "give models:/NAME@ALIAS"),
    (["--model", "models:/loans@champion", "--table", "bank.nothing"], "bank.nothing"),
]


def test_a_model_or_table_that_is_not_there_is_one_line_and_writes_nothing(
    settings, catalog, loans_champion, capsys
) -> None:
    for args, message in MISTAKES:
        capsys.readouterr()
        assert main(["predict", *args, "--into", "bank.loans_predictions"]) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("icetrain: error:") and message in err and "\n" not in err, err
    assert not catalog.table_exists("bank.loans_predictions")


def test_a_table_without_a_feature_the_model_needs_is_refused_naming_it(
    settings, catalog, loans_champion, capsys
) -> None:
    rows = applications(200).drop_columns(["income"])
    append_arrow(catalog, "bank.new_applications", rows, source="test", identifier_fields=("application_id",))
    capsys.readouterr()
    assert main(["predict", "--pipeline", "loans", "--table", "bank.new_applications"]) == 1
    err = capsys.readouterr().err
    assert "'income' not found" in err and err.count("\n") == 1, err

    table = load_table(catalog, TABLE)
    with table.update_schema() as update:
        update.rename_column("income", "salary")
    renamed = applications(3100).slice(3000).rename_columns({"income": "salary"})
    append_arrow(catalog, TABLE, renamed.select(load_table(catalog, TABLE).schema().column_names), source="test")
    assert main(["predict", "--pipeline", "loans"]) == 1
    err = capsys.readouterr().err
    assert "feature income (field" in err and "renamed to salary" in err, err
    assert not catalog.table_exists("bank.loans_predictions")


def test_a_predictions_table_of_another_owner_or_schema_is_refused(settings, catalog, loans_champion, capsys) -> None:
    append_arrow(catalog, "bank.other", applications(10), source="test")
    assert main(["predict", "--pipeline", "loans", "--into", "bank.other"]) == 1
    assert "not an icetrain predictions table" in capsys.readouterr().err
    assert main(["predict", "--pipeline", "loans"]) == 0
    table = load_table(catalog, "bank.loans_predictions")
    with table.transaction() as transaction:
        transaction.set_properties({"icetrain.predictions.owner": "fraud"})
    assert main(["predict", "--pipeline", "loans"]) == 1
    err = capsys.readouterr().err
    assert "holds the predictions of 'fraud', not of 'loans'" in err and "--into" in err, err
    assert len(load_table(catalog, "bank.loans_predictions").snapshots()) == 1


def test_an_empty_input_snapshot_commits_nothing(settings, catalog, loans_champion, capsys) -> None:
    table = load_table(catalog, TABLE)
    table.delete("application_id >= 0")
    assert main(["predict", "--pipeline", "loans"]) == 1
    err = capsys.readouterr().err
    assert "no rows" in err and "nothing was written" in err, err
    assert not catalog.table_exists("bank.loans_predictions")


ICETRAIN = str(Path(sys.executable).parent / "icetrain")


def test_two_processes_scoring_the_same_input_with_the_same_model_make_one_snapshot(
    settings, catalog, loans_champion
) -> None:
    def race() -> None:
        jobs = [
            subprocess.Popen(
                [ICETRAIN, "predict", "--pipeline", "loans", "--file-mb", "1"], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [job.communicate(timeout=300)[0] for job in jobs]
        assert [job.returncode for job in jobs] == [0, 0], outputs
        assert sorted("already held" in out for out in outputs) == [False, True], outputs

    append_arrow(catalog, TABLE, applications(40_000).slice(3000), source="test")
    race()  # both create the predictions table
    append_arrow(catalog, TABLE, applications(60_000).slice(40_000), source="test")
    race()  # both append to it
    table = load_table(catalog, "bank.loans_predictions")
    assert len(table.snapshots()) == 2
    assert table.scan().to_arrow().num_rows == 40_000 + 60_000
    stray = inspect_files(table, timedelta(0)).orphans
    # the loser deletes its data files; a lost commit may leave a manifest behind, which doctor removes
    assert not [f.path for f in stray if "/data/" in f.path], stray


def test_a_killed_scoring_job_commits_nothing_and_doctor_lists_its_files(settings, catalog, loans_champion) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    before = load_table(catalog, "bank.loans_predictions")
    append_arrow(catalog, TABLE, applications(400_000).slice(3000), source="test")
    data_dir = Path(before.location().removeprefix("file://")) / "data"
    known = set(data_dir.iterdir())

    job = subprocess.Popen([ICETRAIN, "predict", "--pipeline", "loans", "--file-mb", "1", "--batch-rows", "512"])
    deadline = time.monotonic() + 120
    while not set(data_dir.iterdir()) - known:
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before it wrote a data file"
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)

    after = load_table(catalog, "bank.loans_predictions")
    assert [s.snapshot_id for s in after.snapshots()] == [s.snapshot_id for s in before.snapshots()]
    stray = inspect_files(after, timedelta(0)).orphans
    assert stray and all(Path(f.path.removeprefix("file://")) not in known for f in stray)
    listed = subprocess.run(
        [ICETRAIN, "doctor", "bank.loans_predictions", "--older-than", "0s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and all(f.path in listed.stdout for f in stray), listed.stderr


def two_nodes(*command: str) -> list[str]:
    """``command`` run as two torchrun nodes of one process each, meeting through c10d on 127.0.0.1 (as two machines would)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "icetrain-test",
                *command,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    return outputs


def test_ranks_score_their_shares_and_rank_0_commits_also_across_torchrun_nodes(
    settings, catalog, loans_champion, capsys
) -> None:
    for start in range(3000, 7000, 1000):  # more data files, so both ranks have row groups to score
        append_arrow(catalog, TABLE, applications(start + 1000).slice(start), source="test")
    assert main(["predict", "--pipeline", "loans", "--nproc", "2", "--into", "bank.two_processes"]) == 0
    assert main(["predict", "--pipeline", "loans", "--into", "bank.one_process"]) == 0
    two, one = predictions(catalog, "bank.two_processes"), predictions(catalog, "bank.one_process")
    assert len(load_table(catalog, "bank.two_processes").snapshots()) == 1
    assert two.num_rows == 7000 and pc.count_distinct(two.column("application_id")).as_py() == 7000
    assert two.select(["application_id", "prediction", "probabilities"]).equals(
        one.select(["application_id", "prediction", "probabilities"])
    )
    assert main(["predict", "--pipeline", "loans", "--nproc", "2", "--table", "bank.nothing"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("icetrain: error:") and "bank.nothing" in err and "\n" not in err, err

    # as two machines would: two torchrun nodes meeting through c10d, training and then scoring
    two_nodes("-m", "training.train", "--pipeline", "loans", "--no-progress", "--set", "optim.epochs=1")
    runs = all_runs(settings)
    assert len(runs) == 2 and {r.data.params["resolved.world_size"] for r in runs} == {"1", "2"}

    two_nodes("-m", "icetrain", "predict", "--pipeline", "loans")
    table = load_table(catalog, "bank.loans_predictions")
    assert len(table.snapshots()) == 1
    scored = table.scan().to_arrow()
    assert scored.num_rows == 7000 and pc.count_distinct(scored.column("application_id")).as_py() == 7000


def test_a_table_without_identifier_fields_is_keyed_by_the_columns_given(
    settings, catalog, loans_champion, capsys
) -> None:
    append_arrow(catalog, "bank.unkeyed", applications(300), source="test")
    assert main(["predict", "--pipeline", "loans", "--table", "bank.unkeyed", "--into", "bank.unkeyed_scores"]) == 1
    assert "has no identifier fields" in capsys.readouterr().err
    args = ["predict", "--pipeline", "loans", "--table", "bank.unkeyed", "--into", "bank.unkeyed_scores"]
    assert main([*args, "--key", "nothing"]) == 1
    assert "key column(s) nothing not in" in capsys.readouterr().err
    assert main([*args, "--key", "application_id"]) == 0
    assert predictions(catalog, "bank.unkeyed_scores").column_names[:2] == ["application_id", "prediction"]


def test_lineage_follows_a_prediction_back_to_its_training_appends_and_a_model_to_its_predictions(
    settings, catalog, loans_champion, capsys
) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    written = load_table(catalog, "bank.loans_predictions").current_snapshot().snapshot_id
    capsys.readouterr()
    assert main(["lineage", "bank.loans_predictions", "--id", "17"]) == 0
    out = capsys.readouterr().out
    training = load_table(catalog, TABLE).snapshots()[0]
    assert "for application_id = 17 in bank.loans_predictions" in out
    assert f"written by predictions snapshot {written}" in out
    assert f"model: loans version 1, MLflow run {loans_champion}" in out
    assert f"trained on snapshot {training.snapshot_id} of {TABLE}" in out
    assert f"{training.snapshot_id}" in out.splitlines()[-1] and "append +3000 rows  test" in out

    assert main(["lineage", "--model", "models:/loans/1"]) == 0
    out = capsys.readouterr().out
    assert "loans version 1" in out and "wrote 1 predictions snapshot(s)" in out
    assert f"bank.loans_predictions snapshot {written}" in out and f"3000 rows of {TABLE}" in out

    assert main(["lineage", "bank.loans_predictions", "--id", "999999"]) == 1
    assert "holds no prediction for application_id = 999999" in capsys.readouterr().err
    assert main(["lineage"]) == 1
    assert "give a predictions table and --id VALUE, or --model MODEL" in capsys.readouterr().err
