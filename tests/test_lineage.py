"""Lineage that closes the loop: reproduce a run, register models that pin their data, what MLflow shows."""

import json
import subprocess

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.errors import RegistryError, RunNotFoundError, SnapshotNotFoundError
from pipeline.lake.catalog import load_table
from pipeline.lake.expiry import expire, parse_duration
from pipeline.tracking.registry import register, unregister
from tests.conftest import config_for, write_appends
from tests.test_cli import icetrain
from training.reproduce import reproduce
from training.train import train


@pytest.fixture
def trained(settings, catalog):
    """A table with three snapshots, and a run on the first one (the split keyed by the id column)."""
    ids = write_appends(catalog, "demo.rows", [120, 80, 40])
    result = train(
        settings,
        config_for("demo.rows", f"data.snapshot_id={ids[0]}", "model.factory=mlp"),
        pipeline="rows",
        progress_bar=False,
    )
    return ids, result


def test_reproducing_a_run_gives_the_same_data_metrics_and_weights(settings, trained) -> None:
    ids, first = trained

    outcome = reproduce(settings, first.run_id, progress_bar=False)

    assert outcome.reproduced, outcome.differences
    assert outcome.max_weight_difference == 0.0
    assert outcome.digests == (first.digest, first.digest)
    assert set(outcome.metrics) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    again = MlflowClient(settings.tracking_uri).get_run(outcome.new_run)
    assert again.data.tags["icetrain.reproduces"] == first.run_id
    assert again.data.tags["icetrain.snapshot_id"] == str(ids[0])


def test_the_reproduce_command_exits_0_when_identical_and_2_when_it_cannot_run(settings, trained) -> None:
    _, first = trained
    same = icetrain("reproduce", first.run_id, "--no-progress")
    assert same.returncode == 0, same.stderr
    assert "max |weight difference|  0" in same.stdout and "identical" in same.stdout

    missing = icetrain("reproduce", "no-such-run")
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"icetrain: cannot reproduce: no MLflow run 'no-such-run' in tracking store {settings.tracking_uri}"
    )


def test_a_run_whose_snapshot_was_expired_cannot_be_reproduced_and_says_which(settings, catalog, trained) -> None:
    ids, first = trained
    expire(load_table(catalog, "demo.rows"), parse_duration("0s"))
    with pytest.raises(
        SnapshotNotFoundError,
        match=f"run {first.run_id} trained on snapshot {ids[0]} of 'demo.rows', which no longer exists",
    ):
        reproduce(settings, first.run_id)
    out = icetrain("reproduce", first.run_id)
    assert out.returncode == 2 and f"snapshot {ids[0]} of 'demo.rows'" in out.stderr


def test_a_registered_models_snapshot_survives_expire_and_unregister_drops_its_tag(settings, catalog, trained) -> None:
    ids, first = trained

    registered = register(settings, first.run_id, "rows-model")
    outcome = expire(load_table(catalog, "demo.rows"), parse_duration("0s"))

    assert (registered.version, registered.iceberg_tag, registered.snapshot_id) == (
        "1",
        "icetrain/rows-model/v1",
        ids[0],
    )
    assert set(outcome.expired) == {ids[1]}
    assert dict(outcome.kept)[ids[0]] == "tag icetrain/rows-model/v1"
    assert "current snapshot" in dict(outcome.kept)[ids[2]]
    assert reproduce(settings, first.run_id, progress_bar=False).reproduced
    version = MlflowClient(settings.tracking_uri).get_model_version("rows-model", "1")
    assert (version.tags["icetrain.iceberg_tag"], version.tags["icetrain.snapshot_id"]) == (
        "icetrain/rows-model/v1",
        str(ids[0]),
    )

    unregister(settings, "rows-model", "1")
    assert "icetrain/rows-model/v1" not in load_table(catalog, "demo.rows").metadata.refs
    assert MlflowClient(settings.tracking_uri).search_model_versions("name = 'rows-model'") == []


def test_registering_refuses_mistakes_and_leaves_nothing_halfway(settings, catalog, trained) -> None:
    ids, first = trained
    write_appends(catalog, "demo.other", [60])
    other = train(settings, config_for("demo.other", "model.factory=linear"), progress_bar=False)
    register(settings, first.run_id, "rows-model")
    load_table(catalog, "demo.rows").manage_snapshots().create_tag(ids[1], "icetrain/rows-model/v2").commit()
    client = MlflowClient(settings.tracking_uri)

    with pytest.raises(
        RegistryError, match="registered model 'rows-model' holds models of table 'demo.rows', not 'demo.other'"
    ):
        register(settings, other.run_id, "rows-model")
    second = train(
        settings, config_for("demo.rows", f"data.snapshot_id={ids[0]}", "model.factory=linear"), progress_bar=False
    )
    with pytest.raises(RegistryError, match="already has a tag 'icetrain/rows-model/v2'"):
        register(settings, second.run_id, "rows-model")
    with pytest.raises(RunNotFoundError):
        register(settings, "no-such-run", "rows-model")

    assert [str(v.version) for v in client.search_model_versions("name = 'rows-model'")] == ["1"]
    assert [t for t in load_table(catalog, "demo.rows").metadata.refs if t.startswith("icetrain/")] == [
        "icetrain/rows-model/v1",
        "icetrain/rows-model/v2",
    ]
    out = icetrain("register", other.run_id, "--name", "rows-model")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "holds models of table 'demo.rows'" in out.stderr


def test_a_reproduction_or_a_replay_verifies_and_never_registers(settings, catalog) -> None:
    write_appends(catalog, "demo.rows", [120])
    first = train(
        settings,
        config_for("demo.rows", "tracking.registered_model=rows-model", "model.factory=linear"),
        progress_bar=False,
    )
    assert first.model_version == "1"

    assert reproduce(settings, first.run_id, progress_bar=False).reproduced
    replay = icetrain("train", "--from-run", first.run_id, "--no-progress")
    assert replay.returncode == 0, replay.stderr

    assert [
        str(v.version) for v in MlflowClient(settings.tracking_uri).search_model_versions("name = 'rows-model'")
    ] == ["1"]
    assert [t for t in load_table(catalog, "demo.rows").metadata.refs if t.startswith("icetrain/")] == [
        "icetrain/rows-model/v1"
    ]


def test_expire_takes_durations_and_refuses_others() -> None:
    assert (
        parse_duration("30d").days == 30
        and parse_duration("12h").seconds == 12 * 3600
        and parse_duration("0s").total_seconds() == 0
    )
    out = icetrain("expire", "demo.rows", "--older-than", "a week")
    assert out.returncode == 1 and "duration 'a week' must be a number and a unit" in out.stderr
    out = icetrain("expire", "demo.rows", "--older-than", "99999999999999999999d")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "longer than 100 years" in out.stderr


def test_what_mlflow_shows_of_a_run(settings, catalog, tmp_path) -> None:
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    ids = write_appends(catalog, "demo.rows", [120])
    first = train(settings, config_for("demo.rows", "model.factory=linear"), pipeline="rows", progress_bar=False)
    run = MlflowClient(settings.tracking_uri).get_run(first.run_id)
    tags, params = run.data.tags, run.data.params

    assert run.info.run_name.startswith(f"rows@{ids[0]} 20") and len(run.info.run_name) == len(
        f"rows@{ids[0]} 2026-12-02 18:55:03"
    )
    assert ids[0] <= 2**53 or not params["data.snapshot_id"].lstrip("-").isdigit(), (
        "a JavaScript Number() of it would round the id"
    )
    assert json.loads(params["data.snapshot_id"]) == str(ids[0])
    assert (
        f"**demo.rows** at snapshot `{ids[0]}`" in tags["mlflow.note.content"]
        and "Pipeline: **rows**" in tags["mlflow.note.content"]
    )
    assert (tags["mlflow.source.name"], tags["icetrain.launched_by"], tags["icetrain.split_key"]) == (
        "icetrain",
        "api",
        "id",
    )
    assert (tags["mlflow.source.git.commit"], tags["icetrain.git_dirty"]) == (head, "false")


def test_the_logged_model_is_named_after_the_pipeline_with_metrics_and_dataset(settings, trained) -> None:
    _, first = trained
    client = MlflowClient(settings.tracking_uri)
    (model,) = client.search_logged_models(experiment_ids=[first.experiment_id])
    assert model.name == "rows" and model.source_run_id == first.run_id
    assert {m.key for m in model.metrics} == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    run = client.get_run(first.run_id)
    logged = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in run.inputs.dataset_inputs
    }
    by_metric = {m.key: (m.dataset_name, m.dataset_digest) for m in model.metrics}
    assert by_metric["train_loss"] == by_metric["train_accuracy"] == (logged["training"].name, first.digest)
    assert (
        by_metric["val_loss"] == by_metric["val_accuracy"] == (logged["validation"].name, logged["validation"].digest)
    )
    assert logged["validation"].name != logged["training"].name
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert isinstance(mlflow.pytorch.load_model(f"models:/{model.model_id}"), torch.nn.Module)


def test_the_dataset_source_loads_exactly_the_rows_of_the_run(settings, trained) -> None:
    ids, first = trained
    run = MlflowClient(settings.tracking_uri).get_run(first.run_id)
    training = next(d for d in run.inputs.dataset_inputs if any(t.value == "training" for t in d.tags))

    loader = mlflow.data.get_source(training.dataset).load()

    assert loader.plan_digest == first.digest
    assert loader.source.plan.pinned.snapshot_id == ids[0]
    assert sum(len(labels) for _, labels in loader) == int(run.data.params["resolved.train_rows"])


def test_compare_shows_runs_side_by_side_with_their_data_changes(settings, catalog, trained, tmp_path) -> None:
    ids, first = trained
    later = train(
        settings,
        config_for("demo.rows", f"data.snapshot_id={ids[2]}", "model.factory=mlp"),
        pipeline="rows",
        progress_bar=False,
    )

    out = icetrain("compare", first.run_id, later.run_id, "--out", str(tmp_path / "cmp.png"))

    assert out.returncode == 0, out.stderr
    header, before, after = out.stdout.splitlines()[:3]
    assert header.split()[:4] == ["run", "snapshot", "rows", "data"] and "val_accuracy" in header
    assert before.split()[:4] == [first.run_id[:12], str(ids[0]), "120", "first"]
    assert after.split()[:4] == [later.run_id[:12], str(ids[2]), "240", "+120"]
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = MlflowClient(settings.tracking_uri).list_artifacts(later.run_id, "comparisons")
    assert [entry.path for entry in logged] == [f"comparisons/compare-{first.run_id[:8]}-{later.run_id[:8]}.png"]


def test_a_deleted_run_or_one_icetrain_did_not_make_cannot_be_reproduced(settings, trained) -> None:
    _, first = trained
    client = MlflowClient(settings.tracking_uri)
    foreign = client.create_run(first.experiment_id).info.run_id
    client.delete_run(first.run_id)

    with pytest.raises(RunNotFoundError, match=f"MLflow run '{first.run_id}' was deleted"):
        reproduce(settings, first.run_id)
    out = icetrain("reproduce", foreign)
    assert out.returncode == 2 and "has no icetrain lineage tags; it was not trained by icetrain" in out.stderr
