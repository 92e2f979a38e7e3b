"""Dead runs do not stay RUNNING, and an MLflow server that does not answer stops training before any data is read."""

import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from icetrain.servers import free_port
from pipeline.tracking.lineage import ensure_experiment
from training.liveness import ENDED_BY_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG, STALE_AFTER_S, end_dead_runs, process_tags

ICETRAIN = str(Path(sys.executable).parent / "icetrain")


def test_an_unreachable_mlflow_server_fails_training_before_the_table_is_even_looked_up(settings, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pw@127.0.0.1:{free_port()}")
    started = time.monotonic()
    out = subprocess.run([ICETRAIN, "train", "--table", "no.such_table"], capture_output=True, text=True, timeout=120)

    assert out.returncode == 1
    assert (
        out.stderr.startswith("icetrain: error: MLflow tracking server http://alice:***@127.0.0.1:")
        and "does not answer" in out.stderr
    )
    assert "not found" not in out.stderr and "s3cret-pw" not in out.stderr + out.stdout
    assert time.monotonic() - started < 30


def test_runs_of_processes_that_are_gone_or_silent_are_ended_and_live_ones_are_left(settings) -> None:
    client = MlflowClient(settings.tracking_uri)
    experiment = ensure_experiment(client, settings)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    now = time.time()
    runs = {
        "alive": process_tags(),
        "gone": {**process_tags(), PID_TAG: gone},
        "silent elsewhere": {
            HOST_TAG: "other-host",
            PID_TAG: "4242",
            HEARTBEAT_TAG: str(int(now - STALE_AFTER_S - 60)),
        },
        "beating elsewhere": {HOST_TAG: "other-host", PID_TAG: "4243", HEARTBEAT_TAG: str(int(now - 30))},
        "not icetrain's": {},
    }
    ids = {name: client.create_run(experiment, tags=tags).info.run_id for name, tags in runs.items()}

    ended = end_dead_runs(client, experiment, now=now)

    assert sorted(ended) == sorted([ids["gone"], ids["silent elsewhere"]])
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "alive": "RUNNING",
        "gone": "KILLED",
        "silent elsewhere": "KILLED",
        "beating elsewhere": "RUNNING",
        "not icetrain's": "RUNNING",
    }
    assert (
        client.get_run(ids["silent elsewhere"])
        .data.tags[ENDED_BY_TAG]
        .startswith("no heartbeat from process 4242 on other-host for ")
    )


def test_a_tracking_server_without_a_health_page_still_counts_as_answering(settings) -> None:
    import http.server
    import threading

    from pipeline.config.settings import Settings
    from training.liveness import check_tracking

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args) -> None: ...

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking(Settings(home=settings.home, mlflow_tracking_uri=f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
