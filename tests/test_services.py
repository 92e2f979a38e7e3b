"""The services profile: `icetrain services start` runs PostgreSQL and an MLflow server; with
ICETRAIN_PROFILE=services the catalog, MLflow's store and Dagster's storage all live there."""

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy
from dagster import DagsterInstance

from tests.conftest import tabular_rows

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def icetrain(*args: str) -> str:
    out = subprocess.run([str(BIN / "icetrain"), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"icetrain {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout


def test_ingest_train_and_dagster_runs_land_in_the_shared_services(settings, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("ICETRAIN_CONFIG", str(REPO / "icetrain.yaml"))
    started = icetrain("services", "start")
    record = json.loads((settings.home / "services" / "services.json").read_text())
    try:
        assert f"MLflow server on http://127.0.0.1:{record['mlflow_port']}" in started
        monkeypatch.setenv("ICETRAIN_PROFILE", "services")
        csv = tmp_path / "rows.csv"
        tabular_rows(0, 120).to_pandas().to_csv(csv, index=False)

        icetrain("ingest", "shop.rows", str(csv), "--identifier", "id")
        trained = icetrain("train", "--table", "shop.rows", "--epochs", "1", "--no-progress")
        icetrain("demo")

        catalog = sqlalchemy.create_engine(
            f"postgresql+psycopg2://icetrain@127.0.0.1:{record['postgres_port']}/iceberg"
        )
        with catalog.connect() as connection:
            tables = {
                tuple(row)
                for row in connection.execute(sqlalchemy.text("select table_namespace, table_name from iceberg_tables"))
            }
        assert tables == {("shop", "rows"), ("demo", "digits")}
        run_id = trained.split("MLflow run ")[1].split()[0]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{record['mlflow_port']}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30
        ) as response:
            assert json.loads(response.read())["run"]["info"]["status"] == "FINISHED"
        monkeypatch.setenv("DAGSTER_HOME", str(settings.home / "services" / "dagster_home"))
        with DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert [(run.job_name, run.status.value) for run in instance.get_runs()] == [("demo_job", "SUCCESS")]
    finally:
        monkeypatch.delenv("ICETRAIN_PROFILE", raising=False)
        stopped = subprocess.run(
            [str(BIN / "icetrain"), "services", "stop"], capture_output=True, text=True, timeout=120
        )
        if record["postgres_dir"].startswith("/var/lib/icetrain/"):  # root's fallback outside the test folder
            shutil.rmtree(Path(record["postgres_dir"]).parent, ignore_errors=True)
    assert stopped.stdout.strip() == "stopped"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{record['mlflow_port']}/health", timeout=2)


def test_the_services_profile_without_running_services_is_one_line(settings, monkeypatch) -> None:
    monkeypatch.setenv("ICETRAIN_PROFILE", "services")
    out = subprocess.run([str(BIN / "icetrain"), "pipelines"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert (
        out.stderr.startswith("icetrain: error: ICETRAIN_PROFILE=services but no services run for ")
        and "make services" in out.stderr
    )
