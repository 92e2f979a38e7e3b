"""The ``icetrain`` command: demo, ingest, snapshots, tag, train, ui.

User mistakes end with one line on stderr and exit code 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from pipeline.config import ReadSpec, Settings, SnapshotRequest, TrainConfig, parse_as_of
from pipeline.errors import ConfigError, IcetrainError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not args.debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        logging.getLogger("alembic").setLevel(logging.ERROR)
    try:
        return args.handler(args) or 0
    except IcetrainError as exc:
        if args.debug:
            raise
        print(f"icetrain: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icetrain", description="Train PyTorch models on pinned Iceberg snapshots.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="ingest the digits demo table and run the whole Dagster job")
    demo.set_defaults(handler=cmd_demo)

    ingest = commands.add_parser("ingest", help="append Parquet or CSV files to a table, one snapshot each")
    ingest.add_argument("table")
    ingest.add_argument("files", nargs="+")
    ingest.set_defaults(handler=cmd_ingest)

    snapshots = commands.add_parser("snapshots", help="list a table's snapshot history")
    snapshots.add_argument("table")
    snapshots.set_defaults(handler=cmd_snapshots)

    tag = commands.add_parser("tag", help="name a snapshot (the current one by default)")
    tag.add_argument("table")
    tag.add_argument("name")
    tag.add_argument("--snapshot-id", type=int)
    tag.set_defaults(handler=cmd_tag)

    train = commands.add_parser("train", help="train on one pinned snapshot and record it in MLflow")
    train.add_argument("--table", help="'namespace.table'")
    train.add_argument("--from-run", metavar="RUN_ID", help="train again exactly as this MLflow run did: same snapshot, rows and config")
    which = train.add_mutually_exclusive_group()
    which.add_argument("--snapshot-id", type=int, help="train on this snapshot")
    which.add_argument("--ref", help="train on the snapshot a tag or branch points at")
    which.add_argument("--as-of", help="train on the snapshot current at this time (ISO 8601 or epoch ms)")
    train.add_argument("--filter", dest="row_filter", help="row filter, e.g. \"label >= 3 and id < 100\"")
    train.add_argument("--features", help="comma-separated feature columns")
    train.add_argument("--label", default="label")
    train.add_argument("--sql", help="DuckDB query over the pinned rows, as table 'snapshot'")
    defaults = TrainConfig()
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.learning_rate)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    train.add_argument("--model", default=defaults.model, choices=("auto", "cnn", "mlp"))
    train.add_argument("--device", default=defaults.device, choices=("auto", "cpu", "cuda"))
    train.add_argument("--workers", type=int, default=defaults.num_workers, help="processes decoding row groups (never changes the order)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_train)

    ui = commands.add_parser("ui", help="start the Dagster UI and the MLflow UI on localhost")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.set_defaults(handler=cmd_ui)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from icetrain.dagster_home import resolve_dagster_home
    from icetrain.demo import run_demo_job
    from pipeline.catalog import load_table, open_catalog
    from pipeline.demo_data import DIGITS_TABLE
    from pipeline.snapshots import list_snapshots

    settings = Settings.from_env()
    dagster_home = resolve_dagster_home(settings)
    print(f"Running demo_job (ingest -> pin snapshot -> check -> train) with DAGSTER_HOME={dagster_home}")
    outcome = run_demo_job()
    history = list_snapshots(load_table(open_catalog(settings), DIGITS_TABLE))
    print(f"\nTable {DIGITS_TABLE} snapshots:")
    for snapshot in history:
        print(f"  {snapshot.snapshot_id}  {snapshot.total_rows:>5} rows  {snapshot.committed_at:%Y-%m-%d %H:%M:%S}")
    print(f"\nTrained on snapshot {outcome.snapshot_id}")
    print("  " + "  ".join(f"{name} {value:.3f}" for name, value in outcome.metrics.items()))
    print(f"Dagster run: {outcome.dagster_run_id}")
    print(f"MLflow run:  {outcome.mlflow_run_id}  (tracking URI {settings.tracking_uri})")
    print("\nOpen both UIs:  icetrain ui   (or: make ui)")
    print(f"Train again on exactly the same data:  icetrain train --from-run {outcome.mlflow_run_id}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.catalog import open_catalog
    from pipeline.ingest import append_file

    catalog = open_catalog(Settings.from_env())
    for path in args.files:
        snapshot_id = append_file(catalog, args.table, path)
        print(f"{path}: snapshot {snapshot_id}")
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from pipeline.catalog import load_table, open_catalog
    from pipeline.snapshots import list_snapshots

    table = load_table(open_catalog(Settings.from_env()), args.table)
    rows = [("snapshot_id", "committed_at (UTC)", "operation", "added", "total", "refs", "source")]
    for s in list_snapshots(table):
        when = s.committed_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        rows.append((str(s.snapshot_id), when, s.operation, str(s.added_rows), str(s.total_rows), ",".join(s.refs), s.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from pipeline.catalog import load_table, open_catalog
    from pipeline.refs import create_tag

    table = load_table(open_catalog(Settings.from_env()), args.table)
    snapshot_id = create_tag(table, args.name, args.snapshot_id)
    print(f"tagged snapshot {snapshot_id} of {args.table} as {args.name!r}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.from_run:
        from pipeline.lineage import replay_request

        settings = Settings.from_env()
        request, spec, config = replay_request(settings, args.from_run)
        config = replace(config, progress=not args.no_progress)
        return _train_and_report(settings, request, spec, config)
    if not args.table:
        raise ConfigError("give --table (or --from-run RUN_ID to train again on an earlier run's data)")
    request = SnapshotRequest(
        table=args.table,
        snapshot_id=args.snapshot_id,
        ref=args.ref,
        as_of=parse_as_of(args.as_of) if args.as_of else None,
    )
    spec = ReadSpec(
        label=args.label,
        features=tuple(name.strip() for name in args.features.split(",")) if args.features else None,
        row_filter=args.row_filter,
        sql=args.sql,
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        val_fraction=args.val_fraction,
        model=args.model,
        device=args.device,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    return _train_and_report(Settings.from_env(), request, spec, config)


def _train_and_report(settings: Settings, request: SnapshotRequest, spec: ReadSpec, config: TrainConfig) -> int:
    from training.run import train_on_snapshot  # torch and MLflow load slowly; config errors should not wait

    result = train_on_snapshot(settings, request, spec, config)
    pinned = result.pinned
    print(f"trained on {pinned.table} snapshot {pinned.snapshot_id} (asked by {pinned.asked_by}), {result.row_count} rows")
    print("  " + "  ".join(f"{name} {value:.3f}" for name, value in result.final_metrics.items()))
    print(f"MLflow run {result.run_id} in experiment {result.experiment_id}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from icetrain.dagster_home import resolve_dagster_home
    from icetrain.servers import start_dagster, start_mlflow, wait_until_up

    settings = Settings.from_env()
    dagster_home = resolve_dagster_home(settings)
    logs = settings.home / "logs"
    signal.signal(signal.SIGTERM, _interrupt)
    servers = [start_dagster(args.dagster_port, logs / "dagster.log")]
    remote_mlflow = settings.tracking_uri.startswith(("http://", "https://"))
    if not remote_mlflow:
        servers.append(start_mlflow(settings, args.mlflow_port, logs / "mlflow.log"))
    try:
        wait_until_up(servers[0], "/server_info")
        if not remote_mlflow:
            wait_until_up(servers[1], "/health")
        print(f"Dagster UI: {servers[0].url}/asset-groups   (DAGSTER_HOME={dagster_home})")
        mlflow_url = settings.tracking_uri if remote_mlflow else servers[1].url
        print(f"MLflow UI:  {mlflow_url}/#/experiments   (tracking URI {settings.tracking_uri})")
        print(f"Logs in {logs}. Press Ctrl-C to stop.", flush=True)
        while all(server.process.poll() is None for server in servers):
            time.sleep(1)
        stopped = [s.name for s in servers if s.process.poll() is not None]
        raise IcetrainError(f"{', '.join(stopped)} stopped unexpectedly; see {logs}")
    finally:
        for server in servers:
            server.stop()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops ``icetrain ui`` like Ctrl-C does, so the servers are stopped too."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
