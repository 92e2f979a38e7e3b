"""Soak: many ingests and training runs against the services profile (PostgreSQL catalog, MLflow server).

Starts its own services in a temporary ICETRAIN_HOME (or uses ``--home``), appends ``--ingests``
small batches to one table, trains ``--trains`` times along the way (each run's snapshot tagged,
as ``icetrain register`` would), and prints:

- scan planning time (pinned snapshot -> row groups) as the snapshot count grows;
- metadata size before and after ``expire`` (keeping tagged snapshots) and planning time after;
- that every run's recorded row count still matches a fresh read of its snapshot, after expiry.

    python bench/soak.py --ingests 200 --trains 20

Not part of the test suite: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingests", type=int, default=200)
    parser.add_argument("--trains", type=int, default=20)
    parser.add_argument("--rows", type=int, default=500, help="rows per ingest")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="icetrain-soak-"))
    os.environ.update({"ICETRAIN_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"})
    os.environ.pop("ICETRAIN_PROFILE", None)
    from icetrain.services import start_services, stop_services
    from pipeline.config.settings import Settings

    record = start_services(Settings(home=home.resolve()))
    os.environ["ICETRAIN_PROFILE"] = "services"
    try:
        soak(Settings.from_env(), args.ingests, args.trains, args.rows)
    finally:
        stop_services(Settings(home=home.resolve()))
        shutil.rmtree(home, ignore_errors=True)
        if str(record["postgres_dir"]).startswith("/var/lib/icetrain/"):  # root's fallback for the cluster
            shutil.rmtree(Path(str(record["postgres_dir"])).parent, ignore_errors=True)
    return 0


def soak(settings, ingests: int, trains: int, rows: int) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.data.reading import prepare_read
    from pipeline.data.snapshots import resolve_snapshot
    from pipeline.data.specs import ReadSpec, SnapshotRequest
    from pipeline.lake.catalog import load_table, open_catalog
    from pipeline.lake.doctor import inspect_files, remove_files
    from pipeline.lake.expiry import expire
    from pipeline.lake.ingest import append_arrow
    from pipeline.lake.refs import create_tag
    from tests.conftest import config_for, tabular_rows
    from training.train import train

    catalog = open_catalog(settings)
    every = max(1, ingests // max(1, trains))
    runs: list[tuple[str, int, int]] = []
    print(f"{'snapshots':>9}  {'plan_s':>8}  {'ingest_s':>8}  {'train_s':>7}  rows")
    ingest_s = 0.0
    for n in range(1, ingests + 1):
        started = time.perf_counter()
        append_arrow(catalog, "soak.rows", tabular_rows((n - 1) * rows, rows), source=f"soak {n}")
        ingest_s += time.perf_counter() - started
        if n % every and n != ingests:
            continue
        table = load_table(catalog, "soak.rows")
        plan_s = planning_time(table, settings, prepare_read, resolve_snapshot, SnapshotRequest, ReadSpec)
        started = time.perf_counter()
        result = train(
            settings,
            config_for("soak.rows", f"data.snapshot_id={table.current_snapshot().snapshot_id}", "optim.epochs=1"),
            progress_bar=False,
        )
        train_s = time.perf_counter() - started
        create_tag(load_table(catalog, "soak.rows"), f"soak/run-{len(runs)}", result.pinned.snapshot_id)
        runs.append((result.run_id, result.pinned.snapshot_id, result.row_count))
        print(f"{n:>9}  {plan_s:>8.4f}  {ingest_s / n:>8.3f}  {train_s:>7.1f}  {result.row_count}", flush=True)

    table = load_table(catalog, "soak.rows")
    before = metadata_bytes(table)
    expiry = expire(table, timedelta(0))
    table = load_table(catalog, "soak.rows")
    after = metadata_bytes(table)
    plan_after = planning_time(table, settings, prepare_read, resolve_snapshot, SnapshotRequest, ReadSpec)
    removed = remove_files(table, inspect_files(table, timedelta(0)).orphans)
    cleaned = metadata_bytes(table)
    print(f"expire: {len(expiry.expired)} snapshots expired, {len(expiry.kept)} kept (tagged or current); metadata {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB;"
          f" doctor --delete removed {removed} unreferenced files -> {cleaned / 1e6:.2f} MB; plan_s after {plan_after:.4f}")  # fmt: skip

    client = MlflowClient(settings.tracking_uri)
    exact = 0
    for run_id, snapshot_id, row_count in runs:
        recorded = client.get_run(run_id).data.tags
        fresh = table.scan(snapshot_id=snapshot_id).to_arrow().num_rows
        exact += fresh == row_count == int(recorded["icetrain.row_count"]) and recorded["icetrain.snapshot_id"] == str(
            snapshot_id
        )
    print(f"lineage: {exact} of {len(runs)} runs read back exactly their recorded rows and snapshot after expiry")


def planning_time(table, settings, prepare_read, resolve_snapshot, SnapshotRequest, ReadSpec) -> float:
    pinned = resolve_snapshot(table, SnapshotRequest("soak.rows"), settings.catalog_name)
    started = time.perf_counter()
    prepare_read(table, pinned, ReadSpec())
    return time.perf_counter() - started


def metadata_bytes(table) -> int:
    from pyarrow import fs

    from pipeline.lake.doctor import _filesystem

    filesystem, root, _ = _filesystem(table)
    infos = filesystem.get_file_info(fs.FileSelector(f"{root}/metadata", recursive=True, allow_not_found=True))
    return sum(info.size or 0 for info in infos if info.type == fs.FileType.File)


if __name__ == "__main__":
    sys.exit(main())
