"""Secrets never show: a catalog password, S3 keys and an MLflow password, configured as a team would,
appear in no output, error, log, MLflow record, Dagster record or snapshot summary."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from icetrain.servers import Server, free_port, wait_until_up
from tests.conftest import tabular_rows
from tests.postgres import postgres_cluster

BIN = Path(sys.executable).parent
SECRETS = {
    "catalog": "pg-SECRET-7d1c",
    "s3_key": "AKIA-SECRET-4f2a",
    "s3_secret": "s3-SECRET-9b8e",
    "mlflow": "mlflow-SECRET-3e5f",
}


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (folder / "log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=folder
        )
    server = Server("mlflow", f"http://127.0.0.1:{port}", process)
    try:
        wait_until_up(server, "/health")
        yield port
    finally:
        server.stop()


def test_no_secret_appears_in_output_errors_logs_runs_metadata_or_summaries(
    settings, tmp_path, monkeypatch, mlflow_server
) -> None:
    with postgres_cluster() as uri:
        monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__TYPE", "sql")
        monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", uri.replace("icetrain@", f"icetrain:{SECRETS['catalog']}@"))
        monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__WAREHOUSE", (tmp_path / "lake").as_uri())
        monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__S3__ACCESS_KEY_ID", SECRETS["s3_key"])
        monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__S3__SECRET_ACCESS_KEY", SECRETS["s3_secret"])
        monkeypatch.setenv("ICETRAIN_CATALOG", "lake")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://trainer:{SECRETS['mlflow']}@127.0.0.1:{mlflow_server}")
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        monkeypatch.setenv("ICETRAIN_CONFIG", str(Path(__file__).resolve().parents[1] / "icetrain.yaml"))
        csv = tmp_path / "rows.csv"
        tabular_rows(0, 200).to_pandas().to_csv(csv, index=False)

        outputs = [
            run("ingest", "shop.rows", str(csv)),
            run("train", "--table", "shop.rows", "--epochs", "1", "--no-progress"),
            run("train", "--table", "shop.rows", "--filter", "nope > 1", expect=1),
            run("train", "--table", "shop.rows", "--lr", "-1", expect=1),
            run("demo"),
        ]
        monkeypatch.setenv(
            "PYICEBERG_CATALOG__LAKE__URI",
            uri.replace("icetrain@", f"icetrain:{SECRETS['catalog']}@").replace("127.0.0.1", "127.0.0.2"),
        )
        outputs.append(run("snapshots", "shop.rows", expect=1))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://trainer:{SECRETS['mlflow']}@127.0.0.1:{free_port()}")
        outputs.append(run("train", "--table", "shop.rows", expect=1))

    assert "trainer:***@127.0.0.1" in outputs[-1], "the unreachable server is named, without its password"
    leaks = [
        f"{where}: ...{text[max(0, text.index(secret) - 80) : text.index(secret) + 20]}..."
        for secret in SECRETS.values()
        for where, text in outputs_and_files(outputs, tmp_path)
        if secret in text
    ]
    assert leaks == [], "\n".join(leaks)


def run(*args: str, expect: int = 0) -> str:
    out = subprocess.run([str(BIN / "icetrain"), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == expect, f"icetrain {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout + out.stderr


def outputs_and_files(outputs: list[str], root: Path):
    """Every command's output, then every file under the test's folder (stores, logs, metadata, Dagster's instance)."""
    yield from ((f"output {i}", text) for i, text in enumerate(outputs))
    for path in root.rglob("*"):
        if path.is_file():
            yield str(path), path.read_bytes().decode("latin-1")
