"""Shared fixtures: a fresh project data directory per test, with real catalog and MLflow store."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig, apply_overrides, parse_config
from pipeline.demo.digits import ingest_digits
from pipeline.lake.catalog import open_catalog
from pipeline.lake.ingest import append_arrow

# The decoded cache is on by default; the suite (and every process it starts) keeps its own.
_CACHE = tempfile.mkdtemp(prefix="icetrain-test-cache-")
os.environ["ICETRAIN_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


def config_for(table: str, *assignments: str) -> PipelineConfig:
    """A quick config for ``table``: two epochs, then ``section.key=value`` assignments as on the CLI."""
    return parse_config(
        apply_overrides(PipelineConfig().model_dump(), [f"data.table={table}", "optim.epochs=2", *assignments])
    )


def all_runs(settings: Settings) -> list:
    """Every MLflow run in the settings' tracking store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


ISOLATED_ENV = ("ICETRAIN_HOME", "ICETRAIN_CATALOG", "ICETRAIN_EXPERIMENT", "MLFLOW_TRACKING_URI", "DAGSTER_HOME")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for an empty ICETRAIN_HOME under tmp_path; nothing from the caller's environment leaks in."""
    for name in ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in [n for n in os.environ if n.startswith("PYICEBERG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ICETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-config"))
    monkeypatch.chdir(tmp_path)
    return Settings.from_env()


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return open_catalog(settings)


@pytest.fixture
def digits(catalog: Catalog) -> list[int]:
    """The demo digits table, written in three appends; returns their snapshot ids."""
    return ingest_digits(catalog)


def tabular_rows(start: int, count: int, *, classes: int = 3, seed: int = 0) -> pa.Table:
    """Rows with an id, two float features and an integer label that the features predict."""
    rng = np.random.default_rng(seed + start)
    ids = np.arange(start, start + count, dtype=np.int64)
    labels = ids % classes
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("x1", pa.float32()),
            pa.field("x2", pa.float64()),
            pa.field("label", pa.int64()),
        ]
    )
    columns = [ids, (labels + rng.normal(0, 0.1, count)).astype(np.float32), rng.normal(0, 1, count), labels]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=schema)


def write_appends(catalog: Catalog, identifier: str, sizes: list[int]) -> list[int]:
    """Append consecutive-id tabular chunks of the given sizes; returns each append's snapshot id.

    ``id`` is the table's identifier field, so it is not a default feature.
    """
    snapshot_ids, start = [], 0
    for size in sizes:
        rows = tabular_rows(start, size)
        snapshot_ids.append(append_arrow(catalog, identifier, rows, source="test", identifier_fields=("id",)))
        start += size
    return snapshot_ids


@pytest.fixture
def loans_champion(settings, catalog, monkeypatch, tmp_path):
    """The quick start's loans pipeline, registering its models as 'loans': trained from the CLI, made champion."""
    import yaml

    from icetrain.cli import main
    from pipeline.demo.applications import applications

    project = yaml.safe_load((Path(__file__).resolve().parents[1] / "icetrain.yaml").read_text())
    project["pipelines"]["loans"]["tracking"] = {"registered_model": "loans"}
    (tmp_path / "icetrain.yaml").write_text(yaml.safe_dump(project))
    monkeypatch.setenv("ICETRAIN_CONFIG", str(tmp_path / "icetrain.yaml"))
    append_arrow(catalog, "bank.applications", applications(3000), source="test", identifier_fields=("application_id",))
    assert main(["train", "--pipeline", "loans", "--epochs", "2", "--no-progress"]) == 0
    (run,) = all_runs(settings)
    assert main(["promote", "loans", "1"]) == 0
    return run.info.run_id
