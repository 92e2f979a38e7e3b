"""The icetrain command, run as a user would: real subprocesses on a temporary ICETRAIN_HOME."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from icetrain.servers import free_port
from pipeline.demo.digits import digits_arrow
from pipeline.lake.catalog import load_table, open_catalog
from tests.conftest import all_runs, tabular_rows

ICETRAIN = str(Path(sys.executable).parent / "icetrain")
REPO = Path(__file__).resolve().parents[1]


def icetrain(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ICETRAIN, *args], capture_output=True, text=True, timeout=timeout)


def test_snapshots_lists_the_history(catalog, digits) -> None:
    out = icetrain("snapshots", "demo.digits")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["snapshot_id", "committed_at"]
    assert [line.split()[0] for line in lines[1:]] == [str(i) for i in digits]
    assert [line.split()[5] for line in lines[1:]] == ["900", "1400", "1797"]


def test_ingest_tag_and_train_on_the_tag(settings, catalog, tmp_path) -> None:
    import pyarrow.csv as pa_csv

    csv_file = tmp_path / "rows.csv"
    pa_csv.write_csv(tabular_rows(0, 90), csv_file)
    assert icetrain("ingest", "demo.rows", str(csv_file)).returncode == 0
    first = load_table(catalog, "demo.rows").current_snapshot().snapshot_id
    assert icetrain("ingest", "demo.rows", str(csv_file)).returncode == 0

    tagged = icetrain("tag", "demo.rows", "v1", "--snapshot-id", str(first))
    assert tagged.returncode == 0, tagged.stderr
    trained = icetrain(
        "train", "--table", "demo.rows", "--ref", "v1", "--features", "x1,x2", "--epochs", "1", "--no-progress"
    )

    assert trained.returncode == 0, trained.stderr
    assert f"snapshot {first} (asked by tag), 90 rows" in trained.stdout
    (run,) = all_runs(settings)
    assert run.data.tags["icetrain.snapshot_id"] == str(first)

    replayed = icetrain("train", "--from-run", run.info.run_id, "--no-progress")
    assert replayed.returncode == 0, replayed.stderr
    assert f"snapshot {first} (asked by id), 90 rows" in replayed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--table", "demo.nope"], "table 'demo.nope' not found"),
        (["train", "--table", "demo.digits", "--snapshot-id", "7"], "snapshot 7 not found"),
        (["train", "--table", "demo.digits", "--as-of", "yesterday"], "neither ISO 8601"),
        (["train", "--table", "demo.digits", "--filter", "label >>> 2"], "cannot parse row filter"),
        (
            ["train", "--table", "demo.digits", "--sql", "select * from read_csv('/etc/passwd')"],
            "SQL transform refused: it must read FROM snapshot only",
        ),
        (["snapshots", "demo.nope"], "not found"),
        (["train", "--table", "demo.digits", "--seed", "-1"], "seed: Input should be greater than or equal to 0"),
        (["train", "--table", "demo.digits", "--lr", "nan"], "optim.lr:"),
        (
            ["train", "--table", "demo.digits", "--set", "optim.learning_rate=0.1"],
            "optim.learning_rate: unknown key; allowed in optim: optimizer, lr,",
        ),
        (
            ["train", "--table", "demo.digits", "--set", "compute.precision=fp64"],
            "compute.precision: Input should be 'fp32', 'bf16' or 'fp16'",
        ),
        (["train", "--table", "demo.digits", "--set", "epochs"], "--set expects section.key=value"),
        (
            ["train", "--table", "demo.digits", "--model", "nowhere:net"],
            "model.factory 'nowhere:net': cannot import 'nowhere'",
        ),
        (["train", "--pipeline", "nope"], "no pipeline 'nope'"),
        (
            ["train", "--table", " demo.digits"],
            "data.table: table name ' demo.digits' is not valid: part ' demo' holds ' '; use letters, digits, '_' and '-' (not first)",
        ),
        (["train", "--resume", "nope"], "no MLflow run 'nope'"),
        (["train"], "data.table: required"),
    ],
)
def test_user_mistakes_print_one_line_and_exit_1(settings, digits, args, message, capsys) -> None:
    from icetrain.cli import main

    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("icetrain: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert all_runs(settings) == []


def post_json(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_pipelines_lists_each_declared_pipeline_with_its_snapshot_and_last_run(settings, digits, tmp_path) -> None:
    (tmp_path / "icetrain.yaml").write_text(
        "pipelines:\n  digits:\n    data: {table: demo.digits}\n    optim: {epochs: 1}\n  later:\n    data: {table: demo.later}\n"
    )
    trained = icetrain("train", "--pipeline", "digits", "--no-progress")
    assert trained.returncode == 0, trained.stderr
    (run,) = all_runs(settings)
    assert run.data.tags["icetrain.pipeline"] == "digits"

    out = icetrain("pipelines")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[1][:5] == ["digits", "demo.digits", str(digits[-1]), run.info.run_id, "FINISHED"]
    assert rows[2] == ["later", "demo.later", "no", "table", "yet", "never", "trained"]


def test_demo_runs_and_both_uis_show_it_until_stopped(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("ICETRAIN_CONFIG", str(REPO / "icetrain.yaml"))
    out = icetrain("demo")
    assert out.returncode == 0, out.stderr
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "demo_job" and run.status == DagsterRunStatus.SUCCESS
    (mlflow_run,) = all_runs(settings)
    snapshot_id = mlflow_run.data.tags["icetrain.snapshot_id"]
    assert f"MLflow run:  {mlflow_run.info.run_id}" in out.stdout
    assert f"Trained on snapshot {snapshot_id}" in out.stdout
    assert f"Dagster run: {run.run_id}" in out.stdout
    with DagsterInstance.get() as instance:  # the documented path (make demo, then make ui) links both ways
        trained = instance.get_latest_materialization_event(AssetKey(["digits", "trained_model"])).asset_materialization
        link = trained.metadata["mlflow_run"].value
    assert link == f"http://127.0.0.1:5000/#/experiments/{mlflow_run.info.experiment_id}/runs/{mlflow_run.info.run_id}"
    assert f"(http://127.0.0.1:3000/runs/{run.run_id})" in mlflow_run.data.tags["mlflow.note.content"]

    dagster_port, mlflow_port = free_port(), free_port()
    ui = subprocess.Popen(
        [ICETRAIN, "ui", "--dagster-port", str(dagster_port), "--mlflow-port", str(mlflow_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lines = [ui.stdout.readline() for _ in range(3)]
        assert lines[0].startswith(f"Dagster UI: http://127.0.0.1:{dagster_port}"), lines
        assert lines[1].startswith(f"MLflow UI:  http://127.0.0.1:{mlflow_port}"), lines
        graphql = f"http://127.0.0.1:{dagster_port}/graphql"
        runs = post_json(graphql, {"query": "{ runsOrError { ... on Runs { results { runId status jobName } } } }"})
        assert runs["data"]["runsOrError"]["results"] == [
            {"runId": run.run_id, "status": "SUCCESS", "jobName": "demo_job"}
        ]
        nodes = post_json(graphql, {"query": "{ assetNodes { assetKey { path } } }"})["data"]["assetNodes"]
        assert {("digits", "trained_model"), ("digits", "training_data"), ("demo", "digits")} <= {
            tuple(node["assetKey"]["path"]) for node in nodes
        }
        locations = post_json(
            graphql, {"query": "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"}
        )
        assert [e["name"] for e in locations["data"]["workspaceOrError"]["locationEntries"]] == ["icetrain"]
        shown = get_json(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/get?run_id={mlflow_run.info.run_id}")[
            "run"
        ]
        assert {"key": "icetrain.snapshot_id", "value": snapshot_id} in shown["data"]["tags"]
        assert shown["inputs"]["dataset_inputs"][0]["dataset"]["source_type"] == "iceberg"
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
        if ui.poll() is None:  # pragma: no cover - only if the ui command failed to stop its servers
            os.killpg(ui.pid, signal.SIGKILL)
    time.sleep(0.5)
    for port in (dagster_port, mlflow_port):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def log_version_0_run(settings, snapshot_id: int, **changed: str) -> str:
    """A run exactly as icetrain logged it before the config tree (params prefixed by class name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("icetrain") or client.get_experiment(
        client.create_experiment("icetrain")
    )
    tags = {"icetrain.catalog": "icetrain", "icetrain.table": "demo.digits", "icetrain.snapshot_id": str(snapshot_id),
            "icetrain.snapshot_asked_by": "latest", "icetrain.row_filter": "label < 9", "icetrain.columns": "label,pixels"}  # fmt: skip
    run = client.create_run(experiment.experiment_id, tags=tags)
    params = {
        "read.label": "label", "read.row_filter": "label < 9", "train.epochs": "1", "train.batch_size": "64",
        "train.learning_rate": "0.003", "train.seed": "0", "train.val_fraction": "0.2", "train.model": "auto",
        "train.device": "auto", "train.num_workers": "0", "train.progress": "True", "data.snapshot_id": str(snapshot_id),
        "data.classes": ",".join(str(c) for c in range(10)), "data.train_rows": "700", "model.class": "SmallCNN",
        "loader.batch_size": "64", "loader.split": "train", "loader.block_rows": "32768", "device": "cpu", **changed,
    }  # fmt: skip
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_run_recorded_before_the_config_tree_replays(settings, digits) -> None:
    old = log_version_0_run(settings, digits[0])

    out = icetrain("train", "--from-run", old, "--no-progress")

    assert out.returncode == 0, out.stderr
    expected = sum(1 for label in digits_arrow()["label"].to_pylist()[:900] if label < 9)
    assert f"snapshot {digits[0]} (asked by id), {expected} rows" in out.stdout
    new = next(r for r in all_runs(settings) if r.info.run_id != old)
    assert (new.data.params["model.factory"], new.data.params["data.filter"], new.data.params["optim.epochs"]) == (
        "auto",
        "label < 9",
        "1",
    )


def test_an_old_run_whose_config_no_longer_validates_names_the_key(settings, digits) -> None:
    old = log_version_0_run(settings, digits[0], **{"train.val_fraction": "1.5"})
    out = icetrain("train", "--from-run", old)
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        == f"icetrain: error: run {old} recorded a config that no longer validates: data.val_fraction: Input should be less than 1 (got '1.5')"
    )


def test_a_date_range_backfills_from_the_dagster_cli_one_snapshot_per_day(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("ICETRAIN_CONFIG", str(REPO / "icetrain.yaml"))
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = str(Path(sys.executable).parent / "dagster")
    backfill = [dagster, "asset", "materialize", "--select", "demo/transactions", "-m", "assets.definitions"]

    first = subprocess.run(
        [*backfill, "--partition-range", "2026-11-01...2026-11-03"], capture_output=True, text=True, timeout=300
    )
    again = subprocess.run(
        [*backfill, "--partition-range", "2026-11-02...2026-11-04"], capture_output=True, text=True, timeout=300
    )

    assert first.returncode == 0 and again.returncode == 0, first.stderr[-2000:] + again.stderr[-2000:]
    table = load_table(open_catalog(settings), "demo.transactions")
    assert [s.summary.additional_properties["icetrain.partition"] for s in table.snapshots()] == [
        "2026-11-01",
        "2026-11-02",
        "2026-11-03",
        "2026-11-04",
    ]
    with DagsterInstance.get() as instance:
        assert instance.get_materialized_partitions(AssetKey(["demo", "transactions"])) == {
            "2026-11-01",
            "2026-11-02",
            "2026-11-03",
            "2026-11-04",
        }


HEAVY = ("torch", "mlflow", "dagster")


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshots", "demo.digits"],
        ["diff", "demo.digits", "main", "main"],
        ["doctor", "demo.digits"],
        ["expire", "demo.digits", "--older-than", "3650d"],
        ["register", "some-run", "--name", "../escape"],
        ["unregister", "a/b", "1"],
        ["train", "--table", "demo.digits", "--experiment", "../escape"],
        ["train", "--table", "demo..digits"],
    ],
)
def test_metadata_commands_and_mistakes_at_the_edge_answer_without_loading_torch_mlflow_or_dagster(
    digits, argv: list[str]
) -> None:
    probe = f"import sys; from icetrain.cli import main; code = main({argv!r}); print('LOADED', [m for m in {HEAVY!r} if m in sys.modules]); sys.exit(code)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode in (0, 1), out.stderr
    assert "LOADED []" in out.stdout, (argv, out.stdout[-300:])
