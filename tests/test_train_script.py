"""The train script: DDP across 2 CPU processes, resume after SIGKILL, mixed precision, regression."""

import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.lake.ingest import append_arrow
from tests.conftest import all_runs, config_for
from tests.test_cli import ICETRAIN, icetrain
from training.train import train

RECORDING_MODELS = '''
import os
import time
from pathlib import Path

import torch
from torch import nn


class Recording(nn.Module):
    """Writes the first feature (the row number) of every training row it sees, per rank."""

    def __init__(self, in_features, num_classes, out_dir, delay):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.out = Path(out_dir) / f"seen-{os.environ.get('RANK', '0')}.txt"
        self.delay = delay

    def forward(self, x):
        if self.training:
            with self.out.open("a") as seen:
                seen.write("".join(f"{int(v)}\\n" for v in x[:, 0].tolist()))
            time.sleep(self.delay)
        return self.linear(x)


def recording(feature_shape, num_classes, out_dir=".", delay=0.0):
    return Recording(feature_shape[0], num_classes, out_dir, delay)


def with_dropout(feature_shape, num_classes, delay=0.0):
    """A model that draws from torch's RNG in training (dropout), slowed down to be killed mid-epoch."""
    class Slow(nn.Sequential):
        def forward(self, x):
            time.sleep(delay if self.training else 0.0)
            return super().forward(x)

    return Slow(nn.Linear(feature_shape[0], 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, num_classes))
'''


def numbered_rows(start: int, count: int) -> pa.Table:
    """Rows whose first feature is their row number; the label is learnable from the second."""
    rng = np.random.default_rng(start)
    row = np.arange(start, start + count, dtype=np.float64)
    x = rng.normal(0, 1, count)
    return pa.table({"row": row, "x": x, "label": (x > 0).astype(np.int64)})


@pytest.fixture
def numbered(settings, catalog, tmp_path: Path) -> str:
    """300 numbered rows in three appends (three files), and the test's model module on the import path."""
    for start in (0, 100, 200):
        append_arrow(catalog, "demo.numbered", numbered_rows(start, 100), source="test")
    (tmp_path / "test_models.py").write_text(textwrap.dedent(RECORDING_MODELS))
    return "demo.numbered"


def test_two_ddp_processes_together_see_every_row_exactly_once(settings, numbered, tmp_path) -> None:
    out = icetrain(
        "train", "--table", numbered, "--nproc", "2", "--epochs", "1", "--batch-size", "16", "--features", "row,x",
        "--set", "data.val_fraction=0", "--set", "model.factory=test_models:recording", "--set", f"model.kwargs={{out_dir: '{tmp_path}'}}",
    )  # fmt: skip

    assert out.returncode == 0, out.stderr
    assert "300 rows, 2 processes" in out.stdout
    seen = [[int(v) for v in (tmp_path / f"seen-{rank}.txt").read_text().split()] for rank in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 150
    assert sorted(seen[0] + seen[1]) == list(range(300))
    (run,) = all_runs(settings)
    assert run.info.status == "FINISHED"
    assert (run.data.params["resolved.world_size"], run.data.params["compute.nproc"]) == ("2", "2")


def test_a_ddp_mistake_is_one_line_before_any_worker_starts(settings, numbered) -> None:
    out = icetrain("train", "--table", numbered, "--nproc", "2", "--filter", "row > 1000")
    assert out.returncode == 1
    assert (
        out.stderr.strip().startswith("icetrain: error: snapshot ")
        and "has no rows matching filter 'row > 1000'" in out.stderr
    )
    assert all_runs(settings) == []


def wait_for_mid_epoch_checkpoint(home: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            process.stderr.read() if process.stderr else "training ended before its first checkpoint"
        )
        found = list(home.glob("checkpoints/*/last.pt"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(settings, numbered) -> None:
    args = ["train", "--table", numbered, "--epochs", "2", "--batch-size", "10", "--features", "row,x", "--no-progress",
            "--set", "model.factory=test_models:with_dropout", "--set", "checkpoint.every_steps=3"]  # fmt: skip
    killed = subprocess.Popen(
        [ICETRAIN, *args, "--set", "model.kwargs={delay: 0.15}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = wait_for_mid_epoch_checkpoint(settings.home, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    first = torch.load(path, weights_only=False)
    assert first["progress"]["epoch"] == 0 and first["loader"]["batches_done"] > 0, "the checkpoint is mid-epoch"
    (run,) = all_runs(settings)
    assert run.info.status == "RUNNING", "nobody could end it: the process was killed"

    reference = icetrain(*args, "--set", "model.kwargs={delay: 0.0}")
    assert reference.returncode == 0, reference.stderr
    found_dead = MlflowClient(settings.tracking_uri).get_run(run.info.run_id)
    assert found_dead.info.status == "KILLED", "the next run in the experiment ends a run whose process is gone"
    assert (
        found_dead.data.tags["icetrain.ended_by"]
        == f"process {killed.pid} on {socket.gethostname()} is gone (found by a later icetrain run)"
    )

    resumed = icetrain("train", "--resume", run.info.run_id, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"MLflow run {run.info.run_id}" in resumed.stdout
    runs = {r.info.run_id: r for r in all_runs(settings)}
    assert len(runs) == 2 and runs[run.info.run_id].info.status == "FINISHED"
    assert "icetrain.ended_by" not in runs[run.info.run_id].data.tags, "a resumed run is alive again"
    (other,) = [r for r in runs if r != run.info.run_id]
    finished = torch.load(path, weights_only=False)
    uninterrupted = torch.load(settings.home / "checkpoints" / other / "last.pt", weights_only=False)
    assert finished["progress"]["epoch"] == uninterrupted["progress"]["epoch"] == 2
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(finished["model"][name], tensor), name
    client = MlflowClient(settings.tracking_uri)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [
        m.value for m in client.get_metric_history(other, "train_loss")
    ]


def test_resuming_a_finished_run_says_there_is_nothing_to_resume(settings, numbered) -> None:
    result = train(settings, config_for(numbered, "optim.epochs=1"), progress_bar=False)
    out = icetrain("train", "--resume", result.run_id)
    assert out.returncode == 1
    assert f"run {result.run_id} already finished; there is nothing to resume" in out.stderr


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(settings, numbered, precision: str) -> None:
    result = train(
        settings,
        config_for(numbered, f"compute.precision={precision}", "compute.device=cpu", "model.factory=mlp"),
        progress_bar=False,
    )
    run = MlflowClient(settings.tracking_uri).get_run(result.run_id)
    assert run.data.params["compute.precision"] == precision
    assert np.isfinite(result.final_metrics["train_loss"])


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine; the CUDA path runs where one exists"
)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_with_each_precision(settings, numbered, precision: str) -> None:
    result = train(
        settings,
        config_for(numbered, "compute.device=cuda", f"compute.precision={precision}", "model.factory=mlp"),
        progress_bar=False,
    )
    run = MlflowClient(settings.tracking_uri).get_run(result.run_id)
    assert run.data.params["resolved.device"].startswith("cuda")
    assert np.isfinite(result.final_metrics["train_loss"])


def test_regression_on_a_numeric_label(settings, catalog) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "price": 3 * x[:, 0] - x[:, 1] + 10})
    append_arrow(catalog, "demo.prices", table, source="test")

    result = train(
        settings,
        config_for(
            "demo.prices",
            "data.label=price",
            "data.task=regression",
            "model.factory=linear",
            "optim.epochs=30",
            "optim.lr=0.1",
        ),
        progress_bar=False,
    )

    assert set(result.final_metrics) == {"train_loss", "train_mae", "val_loss", "val_mae"}
    assert result.final_metrics["val_mae"] < 1.0
    assert result.classes == ()
    params = MlflowClient(settings.tracking_uri).get_run(result.run_id).data.params
    assert (params["data.task"], params["data.classes"]) == ("regression", "")


def test_balanced_class_weights_lift_recall_of_a_rare_class(settings, catalog) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (2000, 2))
    rare = (x[:, 0] > 1.6).astype(np.int64)
    append_arrow(catalog, "demo.rare", pa.table({"a": x[:, 0], "b": x[:, 1], "label": rare}), source="test")

    plain = train(settings, config_for("demo.rare", "model.factory=linear", "optim.epochs=3"), progress_bar=False)
    weighted = train(
        settings,
        config_for("demo.rare", "model.factory=linear", "optim.epochs=3", "optim.class_weights=balanced"),
        progress_bar=False,
    )

    assert weighted.final_metrics["val_recall"] > plain.final_metrics["val_recall"]


def test_ranking_metrics_match_hand_computed_values() -> None:
    from training.tasks import ranking_metrics

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2])
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    # ROC AUC: pairs (positive above negative) / (4 * 4): 0.9 > 4, 0.7 > 3, 0.6 > 3, 0.3 > 1 -> 11/16
    # average precision: precisions at the hits 1/1, 2/3, 3/4, 4/7
    values = ranking_metrics(scores, labels)
    assert values["roc_auc"] == pytest.approx(11 / 16)
    assert values["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 7) / 4)
    assert ranking_metrics(np.array([0.5, 0.5]), np.array([1, 0]))["roc_auc"] == 0.5
