"""A model you can serve: every logged model is an MLflow pyfunc over the table's raw columns, scoring as icetrain predict does."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from icetrain.cli import main
from pipeline.demo.applications import applications
from pipeline.errors import PredictionError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import all_runs
from tests.test_predict import TABLE

MLFLOW = str(Path(sys.executable).parent / "mlflow")


@pytest.fixture
def served(settings, loans_champion):
    mlflow.set_tracking_uri(settings.tracking_uri)
    return mlflow.pyfunc.load_model("models:/loans@champion")


def raw_rows(catalog, count: int | None = None) -> pd.DataFrame:
    rows = load_table(catalog, TABLE).scan().to_arrow().sort_by("application_id")
    return (rows if count is None else rows.slice(0, count)).to_pandas()


def test_the_champion_loads_as_a_pyfunc_and_predicts_as_icetrain_predict_does(settings, catalog, served) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    scored = load_table(catalog, "bank.loans_predictions").scan().to_arrow().sort_by("application_id").to_pandas()
    frame = raw_rows(catalog)
    answer = served.predict(frame)
    assert list(answer.columns) == ["prediction", "probabilities"]
    assert (answer["prediction"].to_numpy() == scored["prediction"].to_numpy()).all()
    assert np.array_equal(np.stack(answer["probabilities"]), np.stack(scored["probabilities"]))


def test_columns_are_matched_by_name_and_a_missing_one_is_one_line(catalog, served) -> None:
    frame = raw_rows(catalog, 50)
    shuffled = frame[list(reversed(frame.columns))].assign(unrelated=1)
    assert served.predict(shuffled).equals(served.predict(frame))
    with pytest.raises(PredictionError, match="the rows lack column\\(s\\) income, which the model reads") as caught:
        served.predict(frame.drop(columns=["income"]))
    assert "\n" not in str(caught.value)
    without_label = served.predict(frame.drop(columns=["defaulted", "application_id"]))
    assert without_label.equals(served.predict(frame)), "new rows have no outcome and need no key"
    inputs = served.metadata.get_input_schema()  # the signature names the raw columns
    assert inputs.input_names() == ["amount", "income", "age", "purpose", "employment", "verified", "applied_at"]


def test_balanced_class_weights_are_divided_out_of_the_probabilities(settings, catalog, monkeypatch, tmp_path) -> None:
    rows = applications(6000)
    base_rate = float(np.mean(rows.column("defaulted").to_numpy()))
    append_arrow(catalog, TABLE, rows, source="test", identifier_fields=("application_id",))
    args = ["train", "--table", TABLE, "--label", "defaulted", "--epochs", "4", "--no-progress"]
    assert main([*args, "--set", "optim.class_weights=balanced", "--set", "data.impute=median"]) == 0
    (run,) = all_runs(settings)
    assert main(["predict", "--model", run.info.run_id, "--into", "bank.weighted_predictions"]) == 0
    scored = load_table(catalog, "bank.weighted_predictions").scan().to_arrow()
    mean = float(np.mean(np.stack(scored.column("probabilities").to_numpy(zero_copy_only=False))[:, 1]))
    assert abs(mean - base_rate) < 0.05, (mean, base_rate)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_posted_rows_as_the_pyfunc_does(settings, catalog, served) -> None:
    port = free_port()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the server execs uvicorn
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri, "PATH": path}
    server = subprocess.Popen(
        [
            MLFLOW,
            "models",
            "serve",
            "-m",
            "models:/loans@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the model server did not come up"
                time.sleep(0.5)
        frame = raw_rows(catalog, 20)
        body = {"dataframe_split": json.loads(frame.to_json(orient="split", date_format="iso", index=False))}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
        local = served.predict(frame)
        assert [row["prediction"] for row in answer] == local["prediction"].tolist()
        assert np.allclose([row["probabilities"] for row in answer], np.stack(local["probabilities"]), atol=1e-6)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_the_decision_threshold_and_the_validation_scores_profile_are_recorded_with_the_model(
    settings, catalog, loans_champion
) -> None:
    from pipeline.tracking.client import tracking_client
    from training.predict import load_served_model

    spec = load_served_model(tracking_client(settings), loans_champion).spec
    run = tracking_client(settings).get_run(loans_champion)
    assert spec.threshold == pytest.approx(run.data.metrics["val_threshold"])
    assert 0 < spec.threshold < 1
    assert spec.reference is not None and spec.reference.rows == int(run.data.params["resolved.val_rows"])
    assert len(spec.reference.counts) == 10  # ten bins of the positive class's probability over [0, 1]

    assert main(["predict", "--pipeline", "loans"]) == 0
    scored = load_table(catalog, "bank.loans_predictions").scan().to_arrow()
    positive = np.stack(scored.column("probabilities").to_numpy(zero_copy_only=False))[:, 1]
    assert (scored.column("prediction").to_numpy() == (positive >= spec.threshold)).all()


def test_the_best_threshold_maximises_f1_between_distinct_scores() -> None:
    from pipeline.data.scores import best_threshold

    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 0])
    threshold, precision, recall = best_threshold(scores, labels)
    # at 0.8: 3 called, 2 right (F1 0.667); at 0.3: 4 called, 3 right (F1 0.857); at 0.9: F1 0.5
    assert (threshold, precision, recall) == (0.3, 0.75, 1.0)
    assert best_threshold(scores, np.zeros(6)) == (0.5, 0.0, 0.0)


def test_a_score_profile_compares_other_scores_over_its_own_bins() -> None:
    from pipeline.data.scores import ScoreProfile

    rng = np.random.default_rng(0)
    reference = ScoreProfile.reference(rng.beta(2, 8, 5000), "probability")
    assert reference.rows == 5000 and len(reference.counts) == 10
    assert reference.psi(reference.same_bins(rng.beta(2, 8, 5000))) < 0.02
    assert reference.psi(reference.same_bins(rng.beta(5, 5, 5000))) > 0.5
    classes = ScoreProfile.reference(np.array([0, 1, 2, 2, 1, 0, 2.0]), "class", 3)
    assert classes.counts == (2, 2, 3)
    assert ScoreProfile.from_dict(classes.to_dict()) == classes
