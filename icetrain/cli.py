"""The ``icetrain`` command: demo, ingest, snapshots, tag, train, pipelines, reproduce, register, promote, unregister, expire, ui.

User mistakes end with one line on stderr and exit code 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from icetrain.training import TrainRequest
from pipeline.config.secrets import redact, scrub
from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig, apply_overrides, parse_config
from pipeline.errors import ConfigError, IcetrainError

if TYPE_CHECKING:
    from training.predict import PredictRequest

# Config flags of ``icetrain train``: each sets one key path of the config tree.
TRAIN_FLAGS = (
    ("--table", "data.table", "'namespace.table'"),
    ("--snapshot-id", "data.snapshot_id", "train on this snapshot"),
    ("--ref", "data.ref", "train on the snapshot a tag or branch points at"),
    ("--as-of", "data.as_of", "train on the snapshot current at this time (ISO 8601 or epoch ms)"),
    ("--filter", "data.filter", 'row filter, e.g. "label >= 3 and id < 100"'),
    ("--features", "data.features", "comma-separated feature columns"),
    ("--label", "data.label", "the label column"),
    ("--sql", "data.sql", "DuckDB query over the pinned rows, as table 'snapshot'"),
    ("--val-fraction", "data.val_fraction", "share of rows held out for validation"),
    ("--model", "model.factory", "a built-in model (auto, cnn, mlp, linear) or 'package.module:function'"),
    ("--epochs", "optim.epochs", "epochs"),
    ("--lr", "optim.lr", "learning rate"),
    ("--batch-size", "loader.batch_size", "rows per batch"),
    ("--workers", "loader.num_workers", "processes decoding row groups (never changes the order)"),
    ("--seed", "seed", "seeds initialisation and data order"),
    ("--device", "compute.device", "auto, cpu, cuda or cuda:N"),
    ("--precision", "compute.precision", "fp32, bf16 or fp16"),
    ("--nproc", "compute.nproc", "processes (DistributedDataParallel through torchrun when > 1)"),
    ("--experiment", "tracking.experiment", "MLflow experiment"),
)
SNAPSHOT_KEYS = ("data.snapshot_id", "data.ref", "data.as_of")


ERROR_FILE_ENV = "ICETRAIN_ERROR_FILE"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if sys.stderr.isatty():
        show_steps()
    if not args.debug:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr keeps to one line
        for name in ("alembic", "mlflow"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return args.handler(args) or 0
    except IcetrainError as exc:
        if args.debug:
            raise
        line = f"icetrain: error: {one_line(scrub(str(exc)))}"
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(line, file=sys.stderr)
            if os.environ.get(ERROR_FILE_ENV):  # the launching process reads it (icetrain predict --nproc)
                Path(os.environ[ERROR_FILE_ENV]).write_text(line)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def show_steps() -> None:
    """Say on stderr what a long step is doing (loading, pinning, reading, training), where a person watches."""
    logger = logging.getLogger("icetrain")
    if not any(isinstance(handler, _Steps) for handler in logger.handlers):
        logger.addHandler(_Steps())
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _Steps(logging.Handler):
    """Writes ``icetrain: <step> ...`` to whatever stderr is now."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"icetrain: {record.getMessage()} ...", file=sys.stderr, flush=True)


def one_line(message: str) -> str:
    """A message as one line, whatever user input it quotes (line breaks shown as ``\\n``)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line, like every other icetrain error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"icetrain: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="icetrain", description="Train PyTorch models on pinned Iceberg snapshots.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors (before or after the command)")
    # --debug is accepted after the command too; SUPPRESS keeps a later default from undoing an earlier --debug.
    debug_anywhere = OneLineParser(add_help=False)
    debug_anywhere.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
    )
    commands = parser.add_subparsers(
        required=True, metavar="COMMAND", parser_class=functools.partial(OneLineParser, parents=[debug_anywhere])
    )

    demo = commands.add_parser("demo", help="ingest the digits demo table and run the demo's Dagster job")
    demo.set_defaults(handler=cmd_demo)

    ingest = commands.add_parser("ingest", help="append Parquet or CSV files to a table, all in one snapshot (or none)")
    ingest.add_argument("table")
    ingest.add_argument("files", nargs="+")
    ingest.add_argument(
        "--append-id",
        help="name this append; re-running with the same id never appends twice (1-128 of letters, digits, - _ . :)",
    )
    ingest.add_argument(
        "--no-check",
        action="store_true",
        help="append even if the data breaks the table's contract (missing columns, NaN/inf, labels outside the classes)",
    )
    ingest.add_argument(
        "--identifier",
        help="comma-separated columns that identify a row, set when the first file creates the table (keeps splits stable)",
    )
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
    train.add_argument("--pipeline", help="a pipeline declared in the pipelines file")
    train.add_argument("--config", help="the pipelines file (default: $ICETRAIN_CONFIG or ./icetrain.yaml)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    runs = train.add_mutually_exclusive_group()
    runs.add_argument(
        "--from-run",
        metavar="RUN_ID",
        help="train again exactly as this MLflow run did: same snapshot, rows, config and model",
    )
    runs.add_argument(
        "--resume", metavar="RUN_ID", help="continue a killed run from its last checkpoint, in the same MLflow run"
    )
    which = train.add_mutually_exclusive_group()
    for flag, path, help_text in TRAIN_FLAGS:
        (which if path in SNAPSHOT_KEYS else train).add_argument(
            flag, dest=_dest(flag), metavar=path.rsplit(".", 1)[-1].upper(), help=f"{help_text} ({path})"
        )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--skip-gates",
        action="store_true",
        help="train even if the pipeline's quality gates refuse the data (recorded on the run as the tag icetrain.gates)",
    )
    train.set_defaults(handler=cmd_train)

    predict = commands.add_parser(
        "predict", help="score a pinned snapshot with a model and write the predictions into an Iceberg table"
    )
    predict.add_argument(
        "--pipeline",
        help="a declared pipeline: its champion (tracking.registered_model), predict.table and predict.into",
    )
    predict.add_argument("--config", help="the pipelines file (default: $ICETRAIN_CONFIG or ./icetrain.yaml)")
    predict.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or an MLflow run id")
    predict.add_argument("--table", help="the table to score (default: the one the model trained on)")
    predict.add_argument("--into", help="the predictions table, created on first write")
    predict.add_argument(
        "--key", help="column(s) that key each prediction, comma-separated (default: the table's identifier fields)"
    )
    pin = predict.add_mutually_exclusive_group()
    pin.add_argument("--snapshot-id", type=int, help="score this snapshot (default: the current one)")
    pin.add_argument("--ref", help="score the snapshot a tag or branch points at")
    pin.add_argument("--as-of", help="score the snapshot current at this time (ISO 8601 or epoch ms)")
    predict.add_argument(
        "--incremental", action="store_true", help="score only rows appended since the last snapshot this model scored"
    )
    predict.add_argument("--batch-rows", type=int, help="rows per forward pass (default: predict.batch_rows, 8192)")
    predict.add_argument(
        "--file-mb", type=int, help="megabytes of predictions per data file (default: predict.file_mb, 128)"
    )
    predict.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    predict.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine, each scoring its share (torchrun)"
    )
    predict.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto: autocast on CUDA"
    )
    predict.set_defaults(handler=cmd_predict)

    lineage = commands.add_parser(
        "lineage",
        help="a prediction back to its model, run, training snapshot and appends; or a model's predictions snapshots",
    )
    lineage.add_argument("table", nargs="?", help="a predictions table (with --id)")
    lineage.add_argument("--id", dest="key", help="the identifier of the row whose predictions to follow back")
    lineage.add_argument(
        "--model", help="models:/NAME/VERSION, models:/NAME@ALIAS or a run id: the predictions it wrote"
    )
    lineage.set_defaults(handler=cmd_lineage)

    monitor = commands.add_parser(
        "monitor",
        help="judge a pipeline's predictions: prediction drift, input drift, realized performance per window",
    )
    monitor.add_argument("--pipeline", required=True, help="a declared pipeline with tracking.registered_model")
    monitor.add_argument("--config", help="the pipelines file (default: $ICETRAIN_CONFIG or ./icetrain.yaml)")
    monitor.add_argument("--no-record", action="store_true", help="do not log the numbers to MLflow")
    monitor.set_defaults(handler=cmd_monitor)

    pipelines = commands.add_parser(
        "pipelines", help="list the declared pipelines with their table, current snapshot and last run"
    )
    pipelines.add_argument("--config", help="the pipelines file (default: $ICETRAIN_CONFIG or ./icetrain.yaml)")
    pipelines.set_defaults(handler=cmd_pipelines)

    diff = commands.add_parser("diff", help="what changed between two snapshots: rows, files, schema by field id")
    diff.add_argument("table")
    diff.add_argument("from_snapshot", metavar="FROM", help="snapshot id, tag or branch")
    diff.add_argument("to_snapshot", metavar="TO", help="snapshot id, tag or branch")
    diff.set_defaults(handler=cmd_diff)

    compare = commands.add_parser(
        "compare", help="runs side by side: snapshot, rows, data changes between them, metrics; a PNG logged to MLflow"
    )
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    compare.add_argument("--out", help="where to write the PNG (default: compare-<runs>.png here)")
    compare.set_defaults(handler=cmd_compare)

    reproduce = commands.add_parser(
        "reproduce", help="train a run again from its id alone and compare data, metrics and weights"
    )
    reproduce.add_argument("run_id")
    reproduce.add_argument("--no-progress", action="store_true", help="no progress bar")
    reproduce.set_defaults(handler=cmd_reproduce)

    register = commands.add_parser(
        "register", help="register a run's model and tag its training snapshot so it is never expired"
    )
    register.add_argument("run_id")
    register.add_argument("--name", required=True, help="registered model name")
    register.add_argument(
        "--alias", help="also point this alias at the version (champion: what models:/NAME@champion loads)"
    )
    register.set_defaults(handler=cmd_register)

    promote = commands.add_parser(
        "promote",
        help="point a registered model's champion alias (or --alias) at a version, as Dagster's evaluation does",
    )
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    promote.set_defaults(handler=cmd_promote)

    unregister = commands.add_parser("unregister", help="delete a registered model version and drop its snapshot tag")
    unregister.add_argument("name")
    unregister.add_argument("version")
    unregister.set_defaults(handler=cmd_unregister)

    expire = commands.add_parser(
        "expire", help="expire old snapshots, never a tagged one (registered models' data stays)"
    )
    expire.add_argument("table")
    expire.add_argument("--older-than", required=True, metavar="DURATION", help="30d, 12h, 45m, 0s")
    expire.set_defaults(handler=cmd_expire)

    doctor = commands.add_parser(
        "doctor", help="list (and with --delete remove) files under a table that nothing references"
    )
    doctor.add_argument("table")
    doctor.add_argument(
        "--older-than",
        default="1d",
        metavar="DURATION",
        help="safety window: only files older than this (default 1d; a writer still working keeps its files)",
    )
    doctor.add_argument("--delete", action="store_true", help="delete the unreferenced files listed")
    doctor.set_defaults(handler=cmd_doctor)

    maintain = commands.add_parser(
        "maintain", help="merge manifests, compact small files, expire old untagged snapshots"
    )
    maintain.add_argument("table")
    maintain.add_argument(
        "--target-file-mb", type=int, default=128, help="size of the compacted data files (default 128)"
    )
    maintain.add_argument(
        "--expire-older-than",
        metavar="DURATION",
        help="also expire snapshots older than this (never tagged ones, branch heads or the current one)",
    )
    maintain.set_defaults(handler=cmd_maintain)

    services = commands.add_parser(
        "services", help="start or stop PostgreSQL and an MLflow server for ICETRAIN_PROFILE=services"
    )
    services.add_argument("action", choices=["start", "stop", "status"])
    services.set_defaults(handler=cmd_services)

    ui = commands.add_parser("ui", help="start the Dagster UI and the MLflow UI on localhost")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--config", help="the pipelines file (default: $ICETRAIN_CONFIG or ./icetrain.yaml)")
    ui.set_defaults(handler=cmd_ui)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from icetrain.dagster_home import resolve_dagster_home
    from icetrain.demo import run_demo_job
    from pipeline.data.snapshots import list_snapshots
    from pipeline.demo.digits import DIGITS_TABLE
    from pipeline.lake.catalog import load_table, open_catalog

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
    print(f"MLflow run:  {outcome.mlflow_run_id}  (tracking URI {redact(settings.tracking_uri)})")
    print("\nOpen both UIs:  icetrain ui   (or: make ui)")
    print(f"Train again on exactly the same data:  icetrain train --from-run {outcome.mlflow_run_id}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.lake.catalog import open_catalog
    from pipeline.lake.ingest import append_files, check_append_id, find_append

    catalog = open_catalog(Settings.from_env())
    identifier_fields = (
        tuple(name.strip() for name in args.identifier.split(",") if name.strip()) if args.identifier else ()
    )
    if args.append_id is not None:
        earlier = find_append(catalog, args.table, check_append_id(args.append_id))
        if earlier is not None:
            print(
                f"append id {args.append_id!r} is already committed to {args.table} as snapshot {earlier}; nothing written"
            )
            return 0
    snapshot_id = append_files(
        catalog,
        args.table,
        args.files,
        identifier_fields=identifier_fields,
        append_id=args.append_id,
        check=not args.no_check,
    )
    print(
        f"snapshot {snapshot_id}: {len(args.files)} file{'s' if len(args.files) > 1 else ''} appended to {args.table} in one commit"
    )
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    from pipeline.data.snapshots import list_snapshots
    from pipeline.lake.catalog import load_table, open_catalog

    table = load_table(open_catalog(Settings.from_env()), args.table)
    rows = [("snapshot_id", "committed_at (UTC)", "operation", "added", "total", "refs", "source")]
    for s in list_snapshots(table):
        when = s.committed_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        rows.append(
            (str(s.snapshot_id), when, s.operation, str(s.added_rows), str(s.total_rows), ",".join(s.refs), s.source)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from pipeline.lake.catalog import load_table, open_catalog
    from pipeline.lake.refs import create_tag

    table = load_table(open_catalog(Settings.from_env()), args.table)
    snapshot_id = create_tag(table, args.name, args.snapshot_id)
    print(f"tagged snapshot {snapshot_id} of {args.table} as {args.name!r}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from icetrain.training import report, run_training

    return report(run_training(Settings.from_env(), train_request(args), debug=args.debug))


def train_request(args: argparse.Namespace) -> TrainRequest:
    """What ``icetrain train`` was asked: a config (pipeline file, flags, --set), a replay or a resume.

    Raises:
        ConfigError: contradictory options, or a bad key or value (named by key path).
    """
    flags = flag_overrides(args)
    if args.resume:
        if flags or args.overrides or args.pipeline:
            raise ConfigError(
                "--resume continues a run exactly as it was; it takes no --pipeline, --set or config flags"
            )
        return TrainRequest(resume_run_id=args.resume, progress=not args.no_progress)
    if args.from_run:
        if args.pipeline:
            raise ConfigError("give --pipeline or --from-run, not both")
        from pipeline.tracking.lineage import replay_config, replay_encoding

        settings = Settings.from_env()
        base = replay_config(settings, args.from_run)
        config = parse_config(apply_overrides(base.model_dump(), [*flags, *args.overrides]))
        return TrainRequest(
            config=config,
            progress=not args.no_progress,
            tags={"icetrain.replays": args.from_run},
            encoding=replay_encoding(settings, args.from_run),
        )
    pipeline_name, declares_gates = None, False
    tree: dict[str, object] = PipelineConfig().model_dump()
    if args.pipeline:
        from pipeline.config.project import load_project

        pipeline = load_project(args.config).pipeline(args.pipeline)
        pipeline_name, tree, declares_gates = pipeline.name, pipeline.config.model_dump(), pipeline.declares_gates
    config = parse_config(apply_overrides(tree, [*flags, *args.overrides]))
    if not config.data.table:
        raise ConfigError(
            "data.table: required; give --pipeline NAME, --table namespace.table or --set data.table=... (or --from-run RUN_ID)"
        )
    return TrainRequest(
        config=config,
        pipeline=pipeline_name,
        progress=not args.no_progress,
        gates=declares_gates,
        skip_gates=args.skip_gates,
    )


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The given config flags as ``key=value`` overrides (a snapshot flag clears the other two choices)."""
    overrides = []
    for flag, path, _ in TRAIN_FLAGS:
        value = getattr(args, _dest(flag))
        if value is None:
            continue
        if path in SNAPSHOT_KEYS:
            overrides += [f"{other}=" for other in SNAPSHOT_KEYS if other != path]
        if path == "data.features":
            value = json.dumps([name.strip() for name in value.split(",") if name.strip()])
        overrides.append(f"{path}={value}")
    return overrides


def cmd_predict(args: argparse.Namespace) -> int:
    request = predict_request(args)  # mistakes are one line before any worker starts
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, not {args.nproc}")
    if args.nproc > 1:
        return _predict_under_torchrun(args.argv, args.nproc, args.debug)
    from training.predict import predict

    done = predict(Settings.from_env(), request)
    if os.environ.get("RANK", "0") == "0":
        print(done.report())
    return 0


def _predict_under_torchrun(argv: list[str], nproc: int, debug: bool) -> int:
    """``icetrain predict`` again, as ``torchrun --standalone --nproc-per-node N -m icetrain predict ...``.

    Each rank scores its share of the row groups and writes its own files; rank 0 commits.

    Raises:
        IcetrainError: a worker's one-line error, or torchrun failing (with where its log is).
    """
    import subprocess
    import tempfile

    settings = Settings.from_env()
    log = settings.home / "logs" / "torchrun.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="icetrain-predict-") as folder:
        error = Path(folder) / "error"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "icetrain", *_without_nproc(argv),
        ]  # fmt: skip
        paths = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, ERROR_FILE_ENV: str(error), "PYTHONPATH": paths}
        with log.open("ab") as stderr:
            finished = subprocess.run(command, stderr=None if debug else stderr, env=env)
        if finished.returncode != 0:
            if error.is_file():
                raise IcetrainError(error.read_text().strip().removeprefix("icetrain: error: "))
            raise IcetrainError(f"torchrun exited with code {finished.returncode}; see {log}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def predict_request(args: argparse.Namespace) -> PredictRequest:
    """What ``icetrain predict`` was asked: a model, an input and a predictions table, given or from a pipeline.

    Raises:
        ConfigError: something is missing or given twice.
    """
    from pipeline.config.tree import PredictSection
    from pipeline.data.specs import parse_as_of
    from training.predict import PredictRequest

    model, table, into, section = args.model, args.table, args.into, PredictSection()
    if args.pipeline:
        from pipeline.config.project import load_project

        pipeline = load_project(args.config).pipeline(args.pipeline)
        registered = pipeline.config.tracking.registered_model
        if model is None and not registered:
            raise ConfigError(
                f"pipeline {pipeline.name!r} registers no model (tracking.registered_model), so it has no champion; give --model"
            )
        model = model or f"models:/{registered}@champion"
        table, into = table or pipeline.scoring_table, into or pipeline.predictions_table
        section = pipeline.config.predict
    if model is None or into is None:
        raise ConfigError("give --model and --into (or --pipeline NAME)")
    return PredictRequest(
        model=model,
        into=into,
        table=table,
        snapshot_id=args.snapshot_id,
        ref=args.ref,
        as_of=parse_as_of(args.as_of) if args.as_of else None,
        incremental=args.incremental,
        key=tuple(part.strip() for part in args.key.split(",") if part.strip()) if args.key else None,
        batch_rows=section.batch_rows if args.batch_rows is None else args.batch_rows,
        file_mb=section.file_mb if args.file_mb is None else args.file_mb,
        device=args.device,
        precision=args.precision,
    )


def cmd_lineage(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.table is None or args.key is None):
        raise ConfigError("give a predictions table and --id VALUE, or --model MODEL")
    from pipeline.tracking.provenance import model_scorings, prediction_lineage, predictions_tables

    settings = Settings.from_env()
    if args.model is None:
        for found in prediction_lineage(settings, args.table, args.key):
            key = ", ".join(f"{name} = {value}" for name, value in found.key.items())
            model = f"{found.model_name} version {found.model_version}" if found.model_name else "a run's model"
            print(f"prediction {found.prediction!r} for {key} in {found.predictions_table}")
            print(
                f"  written by predictions snapshot {found.predictions_snapshot_id}, scoring snapshot {found.input_snapshot_id} of {found.input_table}"
            )
            print(f"  model: {model}, MLflow run {found.run_id}")
            print(f"  trained on snapshot {found.training_snapshot_id} of {found.training_table}, written by:")
            for append in found.appends:
                when = append.committed_at.strftime("%Y-%m-%d %H:%M:%S")
                dagster = f", Dagster run {append.dagster_run_id}" if append.dagster_run_id else ""
                print(
                    f"    {append.snapshot_id}  {when}  {append.operation} +{append.added_rows} rows  {append.source or '-'}{dagster}"
                )
        return 0
    from pipeline.lake.catalog import open_catalog
    from pipeline.tracking.client import tracking_client
    from training.predict import resolve_model

    choice = resolve_model(tracking_client(settings), args.model)
    tables = [args.table] if args.table else predictions_tables(open_catalog(settings))
    scorings = model_scorings(settings, choice.run_id, tables)
    label = f"{choice.name} version {choice.version}" if choice.name else f"run {choice.run_id}"
    print(f"{label} (MLflow run {choice.run_id}) wrote {len(scorings)} predictions snapshot(s)")
    for scoring in scorings:
        when = scoring.committed_at.strftime("%Y-%m-%d %H:%M:%S")
        dagster = f", Dagster run {scoring.dagster_run_id}" if scoring.dagster_run_id else ""
        print(
            f"  {scoring.predictions_table} snapshot {scoring.snapshot_id}  {when}  {scoring.rows} rows of {scoring.input_table} snapshot {scoring.input_snapshot_id}{dagster}"
        )
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    """Print every scoring window and the three checks; exit 0 whatever they say (they are not errors)."""
    from pipeline.config.project import load_project
    from training.monitor import MonitorRequest, monitor

    pipeline = load_project(args.config).pipeline(args.pipeline)
    if not pipeline.config.tracking.registered_model:
        raise ConfigError(
            f"pipeline {pipeline.name!r} registers no model (tracking.registered_model), so it has no champion to monitor"
        )
    found = monitor(Settings.from_env(), MonitorRequest.of(pipeline, record=not args.no_record))
    metric = found.request.section.metric
    print(
        f"{found.request.predictions} (snapshot {found.predictions_snapshot_id or '-'}) against"
        f" {found.request.outcomes}.{found.request.outcome} (snapshot {found.outcomes_snapshot_id or '-'});"
        f" champion: {found.champion or 'none'}"
    )
    for judged in found.windows:
        value = judged.value(metric)
        realized = f"{metric} {value:.3f}" if judged.judged and value is not None else "not judged"
        psi = f"{judged.prediction_psi:.3f}" if judged.prediction_psi is not None else "-"
        marks = " DEGRADED" * judged.degraded + " DRIFTED" * judged.drifted
        print(
            f"  window {judged.window.window}  v{judged.version or '-'}  {judged.window.predictions} predictions"
            f"  coverage {judged.window.coverage:.0%}  {realized}  prediction PSI {psi}{marks}"
        )
    for check in found.checks:
        print(f"{check.name}: {'passed' if check.passed else 'FAILED'}: {check.text}")
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from icetrain.training import pipeline_rows

    rows = pipeline_rows(Settings.from_env(), args.config)
    if not rows:
        print("no pipelines declared (write icetrain.yaml, or point ICETRAIN_CONFIG or --config at one)")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _dest(flag: str) -> str:
    return "flag_" + flag.lstrip("-").replace("-", "_")


def cmd_diff(args: argparse.Namespace) -> int:
    from pipeline.lake.catalog import load_table, open_catalog
    from pipeline.lake.diff import diff_snapshots, resolve_point

    table = load_table(open_catalog(Settings.from_env()), args.table)
    changes = diff_snapshots(
        table,
        args.table,
        resolve_point(table, args.from_snapshot, args.table),
        resolve_point(table, args.to_snapshot, args.table),
    )
    print("\n".join(changes.describe()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.compare import ARTIFACT_DIR, compare_runs

    comparison = compare_runs(Settings.from_env(), args.run_ids)
    print("\n".join(comparison.table_lines()))
    out = Path(args.out or f"compare-{'-'.join(r.run_id[:8] for r in comparison.runs)}.png")
    out.write_bytes(comparison.png)
    print(f"wrote {out}; logged to run {comparison.runs[-1].run_id} under {ARTIFACT_DIR}/")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Exit 0 when reproduced exactly, 1 when something differs, 2 when the run cannot be trained again."""
    try:
        from training.reproduce import reproduce

        outcome = reproduce(Settings.from_env(), args.run_id, progress_bar=not args.no_progress)
    except IcetrainError as exc:
        if args.debug:
            raise
        print(f"icetrain: cannot reproduce: {exc}", file=sys.stderr)
        return 2
    print(f"reproduced run {outcome.original_run} as run {outcome.new_run}")
    print(f"  dataset digest  {outcome.digests[0]}  ->  {outcome.digests[1]}")
    for name, (before, after) in outcome.metrics.items():
        print(f"  {name:<16}{before!r}  ->  {after!r}")
    print(f"  max |weight difference|  {outcome.max_weight_difference:.6g}")
    if outcome.reproduced:
        print("identical: same data, metrics and weights")
        return 0
    print("not reproduced: " + "; ".join(outcome.differences), file=sys.stderr)
    return 1


def cmd_register(args: argparse.Namespace) -> int:
    from pipeline.names import check_alias_name, check_tracking_name

    check_tracking_name(args.name, "registered model")  # at the edge, before MLflow is even imported
    if args.alias is not None:
        check_alias_name(args.alias)
    from pipeline.tracking.registry import register

    settings = Settings.from_env()
    done = register(settings, args.run_id, args.name)
    if done.already:
        print(
            f"run {args.run_id} is already {done.name} version {done.version} (snapshot {done.snapshot_id} of {done.table}, tag {done.iceberg_tag!r})"
        )
    else:
        print(
            f"registered {done.name} version {done.version} (run {args.run_id}); tagged snapshot {done.snapshot_id} of {done.table} as {done.iceberg_tag!r}"
        )
    if args.alias is not None:
        return _report_promotion(settings, done.name, done.version, args.alias)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from pipeline.names import check_alias_name, check_tracking_name

    check_tracking_name(args.name, "registered model")
    check_alias_name(args.alias)
    return _report_promotion(Settings.from_env(), args.name, args.version, args.alias)


def _report_promotion(settings: Settings, name: str, version: str, alias: str) -> int:
    from pipeline.tracking.registry import promote

    moved = promote(settings, name, version, alias)
    if moved.already:
        print(f"{name}@{alias} is already version {version}; nothing changed")
    else:
        before = f" (was version {moved.previous})" if moved.previous else ""
        print(f"{name}@{alias} is now version {version}{before}: models:/{name}@{alias} loads it")
    return 0


def cmd_unregister(args: argparse.Namespace) -> int:
    from pipeline.names import check_tracking_name

    check_tracking_name(args.name, "registered model")
    from pipeline.tracking.registry import unregister

    done = unregister(Settings.from_env(), args.name, args.version)
    dropped = f"; dropped tag {done.iceberg_tag!r} of {done.table}" if done.iceberg_tag else ""
    print(f"deleted {done.name} version {done.version}{dropped}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.lake.catalog import load_table, open_catalog
    from pipeline.lake.doctor import inspect_files, remove_files
    from pipeline.lake.expiry import parse_duration

    window = parse_duration(args.older_than)
    table = load_table(open_catalog(Settings.from_env()), args.table)
    checkup = inspect_files(table, window)
    for stray in checkup.orphans:
        print(f"unreferenced  {stray.size:>12,} B  {stray.modified:%Y-%m-%d %H:%M:%S}  {stray.path}")
    size = sum(stray.size for stray in checkup.orphans)
    print(
        f"{args.table}: {checkup.referenced} referenced files; {len(checkup.orphans)} unreferenced older than {args.older_than} ({size:,} bytes); {len(checkup.too_young)} younger kept"
    )
    if checkup.orphans and not args.delete:
        print("run again with --delete to remove them")
    if args.delete:
        print(f"deleted {remove_files(table, checkup.orphans)} unreferenced files")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    from pipeline.lake.catalog import load_table, open_catalog
    from pipeline.lake.expiry import parse_duration
    from pipeline.lake.maintenance import maintain

    if not 1 <= args.target_file_mb <= 4096:
        raise ConfigError(f"--target-file-mb must be between 1 and 4096, got {args.target_file_mb}")
    window = parse_duration(args.expire_older_than) if args.expire_older_than else None
    table = load_table(open_catalog(Settings.from_env()), args.table)
    done = maintain(table, target_file_bytes=args.target_file_mb * 1024 * 1024, expire_older_than=window)
    print(
        f"{args.table}: data files {done.files_before} -> {done.files_after} ({done.rewritten_files} small files rewritten), manifests {done.manifests_before} -> {done.manifests_after}; current snapshot {done.snapshot_id}"
    )
    if done.expiry is not None:
        print(
            f"expired {len(done.expiry.expired)} snapshots; kept {len(done.expiry.kept)} (tagged, branch heads, current or newer)"
        )
    print(f"later appends merge manifests; unreferenced files: icetrain doctor {args.table} --delete")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from icetrain.services import start_services, stop_services
    from pipeline.config.settings import SERVICES_FILE, services_dir

    home = Settings.from_env({k: v for k, v in os.environ.items() if k != "ICETRAIN_PROFILE"}).home
    settings = Settings(home=home)
    record_file = services_dir(home) / SERVICES_FILE
    if args.action == "start":
        record = start_services(settings)
        print(f"PostgreSQL on 127.0.0.1:{record['postgres_port']} (databases iceberg, mlflow, dagster)")
        print(f"MLflow server on http://127.0.0.1:{record['mlflow_port']}")
        print(f"Dagster instance {services_dir(home) / 'dagster_home'}")
        print("Use them with:  export ICETRAIN_PROFILE=services   (stop with: icetrain services stop)")
    elif args.action == "stop":
        print("stopped" if stop_services(settings) else f"no services recorded in {record_file}")
    else:
        print(record_file.read_text().strip() if record_file.exists() else f"no services recorded in {record_file}")
    return 0


def cmd_expire(args: argparse.Namespace) -> int:
    from pipeline.lake.catalog import load_table, open_catalog
    from pipeline.lake.expiry import expire, parse_duration

    older_than = parse_duration(args.older_than)
    outcome = expire(load_table(open_catalog(Settings.from_env()), args.table), older_than)
    print(
        f"expired {len(outcome.expired)} snapshot(s) of {args.table}"
        + (": " + ", ".join(str(s) for s in outcome.expired) if outcome.expired else "")
    )
    for snapshot_id, why in outcome.kept:
        print(f"kept {snapshot_id}: {why}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from icetrain.dagster_home import resolve_dagster_home
    from icetrain.servers import start_dagster, start_mlflow, wait_until_up

    settings = Settings.from_env()
    dagster_home = resolve_dagster_home(settings)
    logs = settings.home / "logs"
    signal.signal(signal.SIGTERM, _interrupt)
    from pipeline.config.project import find_project_file

    remote_mlflow = settings.tracking_uri.startswith(("http://", "https://"))
    mlflow_ui = settings.mlflow_ui or (
        redact(settings.tracking_uri) if remote_mlflow else f"http://127.0.0.1:{args.mlflow_port}"
    )
    servers = [
        start_dagster(args.dagster_port, logs / "dagster.log", settings.home, find_project_file(args.config), mlflow_ui)
    ]
    if not remote_mlflow:
        servers.append(start_mlflow(settings, args.mlflow_port, logs / "mlflow.log"))
    try:
        wait_until_up(servers[0], "/server_info")
        if not remote_mlflow:
            wait_until_up(servers[1], "/health")
        print(f"Dagster UI: {servers[0].url}/asset-groups   (DAGSTER_HOME={dagster_home})")
        mlflow_url = redact(settings.tracking_uri) if remote_mlflow else servers[1].url
        print(f"MLflow UI:  {mlflow_url}/#/experiments   (tracking URI {redact(settings.tracking_uri)})")
        print(f"Logs in {logs}. Press Ctrl-C to stop.", flush=True)
        while all(server.process.poll() is None for server in servers):
            time.sleep(1)
        stopped = [s.name for s in servers if s.process.poll() is not None]
        raise IcetrainError(f"{', '.join(stopped)} stopped unexpectedly; see {logs}")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not leave servers running
        for server in servers:
            server.stop()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops ``icetrain ui`` like Ctrl-C does, so the servers are stopped too."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
